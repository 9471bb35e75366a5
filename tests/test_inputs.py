"""Audio given to the Python API (audio/inputs.py): every accepted form embeds as the plain tensor
does, and every mistake gets one message naming the argument, the same through embed, predict,
the HEAR functions, in-memory tasks and visualize_clips."""

import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from specmae import hear
from specmae.audio import AudioError, FrontendConfig, check_sample_rate, read_clips, resample
from specmae.checkpoint import CheckpointError
from specmae.evaluation.tasks import Task
from specmae.features import load
from specmae.features.predict import Predictor
from specmae.model.classifier import Classifier

from test_features import SR, noise, tiny_checkpoint, tiny_config


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("inputs") / "tiny")


@pytest.fixture(scope="module")
def embedder(ckpt):
    return load(ckpt)


@pytest.fixture(scope="module")
def hear_model(ckpt):
    return hear.load_model(str(ckpt))


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    return Predictor(Classifier(tiny_config().encoder, 3), FrontendConfig(), [-7.0, 4.0], ["a", "b", "c"],
                     "multiclass")


@pytest.fixture(scope="module")
def wave():
    return noise(1.3, seed=3)


def write(path, wave, rate=SR):
    sf.write(path, np.asarray(wave), rate, subtype="FLOAT")
    return path


# --- accepted forms ---------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["numpy", "float64", "tensor-float64", "batch-of-one", "list", "tuple",
                                  "list-of-lists", "str-path", "pathlib", "numpy-str-path", "list-of-paths"])
def test_every_form_embeds_as_the_plain_tensor(embedder, wave, tmp_path, form):
    expected = embedder.embed(wave, SR)
    path = write(tmp_path / "clip.wav", wave)
    audio, rate = {
        "numpy": (wave.numpy(), SR), "float64": (wave.numpy().astype(np.float64), SR),
        "tensor-float64": (wave.double(), SR), "batch-of-one": (wave[None], SR),
        "list": ([wave], SR), "tuple": ((wave.numpy(),), SR), "list-of-lists": ([wave.tolist()], SR),
        "str-path": (str(path), None), "pathlib": (path, None), "numpy-str-path": (np.str_(path), None),
        "list-of-paths": ([path], None)}[form]
    out = embedder.embed(audio, rate)
    frames = out.frames[0] if isinstance(out.frames, list) or out.frames.ndim == 3 else out.frames
    assert torch.equal(frames, expected.frames) and torch.equal(out.clip.reshape(-1), expected.clip)


@pytest.mark.parametrize("rate", [16000, 16000.0, np.int64(16000), np.float32(16000), np.uint16(16000)])
def test_sample_rates_that_are_whole_numbers(embedder, wave, rate):
    assert check_sample_rate(rate) == 16000 and type(check_sample_rate(rate)) is int
    assert torch.equal(embedder.embed(wave, rate).frames, embedder.embed(wave, SR).frames)


def test_a_file_is_decoded_at_its_own_rate_by_the_loader(embedder, tmp_path):
    wave44 = noise(1.0, seed=5, n=44100).numpy()
    path = write(tmp_path / "44k.wav", wave44, 44100)
    from_file = embedder.embed(path)
    assert torch.equal(from_file.frames, embedder.embed(wave44, 44100).frames)
    assert torch.equal(from_file.frames, embedder.embed(resample(wave44, 44100, SR), SR).frames)
    stereo = write(tmp_path / "stereo.wav", np.stack([wave44, wave44], 1), 44100)
    assert torch.equal(embedder.embed(stereo).frames, from_file.frames)          # mixed to mono


def test_lists_of_any_lengths_and_paths(embedder, tmp_path):
    a, b = noise(0.7, seed=1), noise(2.2, seed=2)
    out = embedder.embed([write(tmp_path / "a.wav", a), str(write(tmp_path / "b.wav", b))])
    ref = embedder.embed([a, b], SR)
    assert all(torch.equal(x, y) for x, y in zip(out.frames, ref.frames)) and torch.equal(out.clip, ref.clip)


def test_a_2d_input_is_a_batch_whatever_its_shape(embedder, predictor, hear_model):
    audio = torch.rand(16, 9) * 2 - 1   # 16 sounds of 9 samples: nothing is guessed
    assert embedder.embed(audio, SR).frames.shape == (16, 1, 240)
    assert predictor.predict(audio, SR).shape == (16, 3)
    audio = torch.rand(16, 8) * 2 - 1   # what (samples, channels) looks like: refused, not transposed
    for call in (lambda: embedder.embed(audio, SR), lambda: predictor.predict(audio, SR)):
        with pytest.raises(ValueError, match=re.escape("audio: shape (16, 8): a batch (B, S) of 16 clips of 8 "
                                                       "samples each; audio read as (samples, channels) is mixed")):
            call()
    # The HEAR contract fixes the layout: 16 sounds of 8 samples.
    assert hear.get_scene_embeddings(audio, hear_model).shape == (16, 240)
    frames, ts = hear.get_timestamp_embeddings(audio, hear_model)
    assert frames.shape == (16, 1, 240) and ts.shape == (16, 1)


def test_predict_takes_the_same_forms(predictor, wave, tmp_path):
    expected = predictor.predict(wave, SR)
    assert expected.shape == (3,)
    assert torch.equal(predictor.predict(write(tmp_path / "p.wav", wave)), expected)
    assert torch.equal(predictor.predict([wave.numpy()], SR)[0], expected)


def test_in_memory_tasks_and_visualize_read_the_same_way(ckpt, tmp_path):
    task = Task.from_arrays("t", torch.stack([noise(0.2), noise(0.2, seed=1)]).double(), ["a", "b"],
                            ["train", "test"], sample_rate=np.int64(16000))
    assert task.sample_rate == 16000 and all(w.dtype == np.float32 for w in task.waves)
    from specmae.visualize import visualize_clips
    bad = torch.tensor([0.1, float("nan")] * 1000)
    summary = visualize_clips(ckpt, [("bad", bad)], tmp_path / "vis")
    assert summary.failed == [("bad", "bad: non-finite samples (NaN or inf)")]


# --- mistakes: one message each, the same through every entry point -----------------------------

def nan_row():
    x = torch.zeros(2, 400)
    x[1, 5] = float("nan")
    return x


# Mistakes a HEAR-shaped input (a 2-D tensor at the model rate) can make.
BATCH_MISTAKES = [
    (nan_row(), "audio[1]: non-finite samples (NaN or inf)"),
    (torch.full((2, 400), float("inf")), "audio[0]: non-finite samples (NaN or inf)"),
    (torch.zeros(2, 0), "audio[0]: empty audio (0 samples)"),
    (torch.zeros(0, 400), "audio: shape (0, 400): a batch of no clips"),
    (torch.zeros(2, 400, dtype=torch.int16), "audio: int16 samples: give float samples in [-1, 1] "
                                             "(integer PCM: divide by 32768)"),
    (torch.zeros(2, 400, dtype=torch.uint8), "audio: uint8 samples: give float samples in [-1, 1] "
                                             "(integer PCM: subtract 128, divide by 128)"),
    (torch.zeros(2, 400, dtype=torch.bool), "audio: bool samples: give float samples in [-1, 1]"),
    (torch.zeros(2, 400, dtype=torch.complex64), "audio: complex64 samples: give real samples"),
    (torch.full((2, 400), 32767.0), "audio[0]: samples up to 3.28e+04, far beyond full scale"),
]

ENTRY_POINTS = {
    "embed": lambda m, audio: m["embedder"].embed(audio, SR),
    "predict": lambda m, audio: m["predictor"].predict(audio, SR),
    "hear-scene": lambda m, audio: hear.get_scene_embeddings(audio, m["hear"]),
    "hear-timestamps": lambda m, audio: hear.get_timestamp_embeddings(audio, m["hear"]),
}


@pytest.fixture(scope="module")
def models(embedder, predictor, hear_model):
    return {"embedder": embedder, "predictor": predictor, "hear": hear_model}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("audio, message", BATCH_MISTAKES)
def test_a_mistake_has_one_message_everywhere(models, entry, audio, message):
    with pytest.raises(AudioError, match="^" + re.escape(message)):
        ENTRY_POINTS[entry](models, audio)


def path_in_samples(tmp_path):
    return [noise(0.1), str(write(tmp_path / "x.wav", noise(0.1)))]


# Mistakes of inputs the HEAR API does not take: through embed and predict, and read_clips itself.
MISTAKES = [
    (lambda p: (torch.tensor([0.1, float("nan")] * 100), SR), "audio: non-finite samples (NaN or inf)"),
    (lambda p: ([noise(0.1), noise(0.2), torch.tensor([float("nan")])], SR), "audio[2]: non-finite samples"),
    (lambda p: ([noise(0.1), torch.zeros(2, 100)], SR),
     "audio[1]: shape (2, 100): a clip in a list is mono samples (S,) (mix channels first)"),
    (lambda p: (torch.zeros(2, 3, 100), SR), "audio: shape (2, 3, 100): expected samples (S,), a batch (B, S)"),
    (lambda p: (torch.tensor(0.5), SR), "audio: shape (): expected samples (S,)"),
    (lambda p: (None, SR), "audio: a NoneType: expected samples (a float array or tensor), a list of clips, "
                           "or a file path"),
    (lambda p: ({"x": 1}, SR), "audio: a dict: expected samples"),
    (lambda p: (np.array(["a.wav", "b.wav"]), SR), "audio: an array of <U5: expected samples"),
    (lambda p: ([0.1, 0.2, 0.3], SR), "audio: a list of numbers: a list holds clips"),
    (lambda p: ([], SR), "audio: an empty list: no clips given"),
    (lambda p: ([[0.1, 0.2], [0.3]], SR), None),   # ragged lists of numbers are two clips: fine
    (lambda p: (path_in_samples(p), SR), "audio[1]: a file path in a list of samples"),
    (lambda p: (noise(0.1), 44100.5), "sample_rate 44100.5: expected a positive whole number of Hz (e.g. 16000)"),
    (lambda p: (noise(0.1), 0), "sample_rate 0: expected a positive whole number of Hz"),
    (lambda p: (noise(0.1), -16000), "sample_rate -16000: expected a positive whole number of Hz"),
    (lambda p: (noise(0.1), True), "sample_rate True: expected a positive whole number of Hz"),
    (lambda p: (noise(0.1), "16000"), "sample_rate '16000': expected a positive whole number of Hz"),
    (lambda p: (noise(0.1), float("nan")), "sample_rate nan: expected a positive whole number of Hz"),
    (lambda p: (noise(0.1), None), "sample_rate missing: audio given as samples needs the rate they are at"),
    (lambda p: (str(write(p / "c.wav", noise(0.1), 44100)), 16000), "sample_rate 16000: {p}/c.wav is at 44100 Hz; "
                                                                    "a file is decoded at its own rate"),
    (lambda p: (str(write(p / "c.wav", noise(0.1))), 16000), None),   # the file's own rate: fine
    (lambda p: (np.zeros((48000, 2), np.float32), SR), "audio: shape (48000, 2): a batch (B, S) of 48000 clips"),
    (lambda p: (str(p / "nowhere.wav"), None), "{p}/nowhere.wav: file not found"),
    (lambda p: (noise(0.4, n=1), 48000), "audio: too short, gives 0 samples at 16000 Hz"),
]


@pytest.mark.parametrize("entry", ["embed", "predict", "read_clips"])
@pytest.mark.parametrize("make, message", MISTAKES)
def test_each_mistake_names_the_argument(models, tmp_path, entry, make, message):
    audio, rate = make(tmp_path)
    call = {"embed": lambda: models["embedder"].embed(audio, rate),
            "predict": lambda: models["predictor"].predict(audio, rate),
            "read_clips": lambda: read_clips(audio, rate, SR)}[entry]
    if message is None:
        call()
        return
    with pytest.raises(ValueError, match="^" + re.escape(message.format(p=tmp_path))):
        call()


def test_names_label_the_clips(embedder):
    with pytest.raises(AudioError, match="^song.wav: non-finite"):
        embedder.embed([noise(0.1), torch.tensor([float("nan")] * 10)], SR, names=["a.wav", "song.wav"])
    with pytest.raises(ValueError, match="^names: 1 names for 2 clips"):
        embedder.embed([noise(0.1), noise(0.1)], SR, names=["a.wav"])


@pytest.mark.parametrize("audio", [torch.zeros(16000), torch.zeros(2, 1, 16000), np.zeros((2, 16000), np.float32),
                                   [torch.zeros(16000)]])
@pytest.mark.parametrize("function", [hear.get_scene_embeddings, hear.get_timestamp_embeddings])
def test_hear_takes_only_what_its_contract_says(hear_model, function, audio):
    with pytest.raises(AudioError, match=r"^audio: .*: the HEAR 2021 API takes a float tensor \(n_sounds, "
                                         r"n_samples\) at the model's sample_rate \(16000 Hz\)"):
        function(audio, hear_model)


@pytest.mark.parametrize("path", [None, 3, b"runs/demo", ["runs/demo"]])
def test_hear_load_model_refuses_what_is_no_path(path):
    with pytest.raises(TypeError, match=f"^model_file_path {re.escape(repr(path))}: expected the path "
                                        r"\(str or os.PathLike\)"):
        hear.load_model(path)


def test_hear_load_model_leaves_missing_paths_to_the_checkpoint_loader(tmp_path):
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(tmp_path / 'nowhere'))}: no such checkpoint"):
        hear.load_model(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="nowhere.pth: no such checkpoint"):
        hear.load_model(os.fspath(tmp_path / "nowhere.pth"))
