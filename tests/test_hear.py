"""The HEAR 2021 API, held to every check of the `hearvalidator` package (re-implemented here:
the package does not install on current Python), plus long audio with bounded memory."""

import numpy as np
import pytest
import torch

from conftest import GOLDEN_MODELS, golden_import_options, golden_model_config
from specmae import hear
from specmae.checkpoint import CheckpointError
from test_features import tiny_checkpoint

ACCEPTABLE_SAMPLE_RATES = [16000, 22050, 44100, 48000]


class ModelError(AssertionError):
    pass


def validate(module, model, device="cpu"):
    """The validator's checks, in its order and with its tolerances."""
    if not isinstance(model, torch.nn.Module):
        raise ModelError("load_model must return a torch.nn.Module")
    if not hasattr(model, "sample_rate") or model.sample_rate not in ACCEPTABLE_SAMPLE_RATES:
        raise ModelError(f"sample rate {getattr(model, 'sample_rate', None)} not allowed")
    for name in ("scene_embedding_size", "timestamp_embedding_size"):
        if not isinstance(getattr(model, name, None), int):
            raise ModelError(f"Model.{name} must be an int")
    for num_audio, length in [(2, 1.07), (2, 1.98), (2, 4.0)]:
        audio = torch.rand((num_audio, int(length * model.sample_rate)), device=device) * 2 - 1.0
        embeddings, timestamps = module.get_timestamp_embeddings(audio, model)
        if embeddings.dtype != torch.float32:
            raise ModelError(f"embeddings are {embeddings.dtype}")
        embeddings, timestamps = embeddings.detach().cpu().numpy(), timestamps.detach().cpu().numpy()
        if embeddings.ndim != 3 or timestamps.ndim != 2 or embeddings.shape[0] != num_audio:
            raise ModelError(f"shapes {embeddings.shape}, {timestamps.shape}")
        if embeddings.shape[:2] != timestamps.shape or embeddings.shape[2] != model.timestamp_embedding_size:
            raise ModelError(f"shapes {embeddings.shape}, {timestamps.shape}")
        if timestamps.shape[1] > 1:
            diff = np.diff(timestamps)
            if np.max(np.abs(diff - np.mean(diff))) > 1:
                raise ModelError(f"irregular timestamps {timestamps[0]}")
            if np.max(timestamps) > 1000 * length:
                raise ModelError(f"timestamps end at {np.max(timestamps)} ms, audio is {1000 * length} ms")
    audio = torch.rand((4, int(2.74 * model.sample_rate)), device=device) * 2 - 1.0
    scene = module.get_scene_embeddings(audio, model)
    if scene.dtype != torch.float32:
        raise ModelError(f"scene embeddings are {scene.dtype}")
    if tuple(scene.shape) != (4, model.scene_embedding_size):
        raise ModelError(f"scene embeddings {tuple(scene.shape)}")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("hear")
    return {p: tiny_checkpoint(root / p, preset=p) for p in ("80x208p16x16", "80x200p16x4")}


@pytest.mark.parametrize("timestamps", ["centre", "official"])
@pytest.mark.parametrize("preset", ["80x208p16x16", "80x200p16x4"])
def test_passes_the_validator(checkpoints, preset, timestamps):
    model = hear.load_model(str(checkpoints[preset]), timestamps=timestamps)
    assert type(model.sample_rate) is int and model.sample_rate == 16000
    assert model.scene_embedding_size == model.timestamp_embedding_size == 240
    validate(hear, model)
    assert not model.training


def test_options_change_the_sizes(checkpoints):
    model = hear.load_model(str(checkpoints["80x208p16x16"]), layers=[0, 1, 2], layer_mode="concat")
    assert model.timestamp_embedding_size == 720
    validate(hear, model)
    untrained = hear.load_model("", size="tiny", preset="80x200p16x4")
    assert untrained.scene_embedding_size == 5 * 192
    with pytest.raises(CheckpointError, match="nowhere: no such checkpoint"):
        hear.load_model("nowhere")
    with pytest.raises(ValueError, match="timestamps"):
        hear.load_model("", size="tiny", timestamps="middle")


def test_timestamps_are_centres_and_the_trailing_frame_past_the_end_is_dropped(checkpoints):
    model = hear.load_model(str(checkpoints["80x208p16x16"]))
    audio = torch.rand(2, 31680) * 2 - 1  # 1.98 s: 199 log-mel frames, 13 frames, the last centred at 1995 ms
    frames, ts = hear.get_timestamp_embeddings(audio, model)
    assert torch.equal(ts[0], 160 * torch.arange(12, dtype=torch.float32) + 75)
    full = model.embed(audio, 16000)
    assert full.frames.shape[1] == 13 and torch.equal(frames, full.frames[:, :12])
    torch.testing.assert_close(hear.get_scene_embeddings(audio, model), full.frames.mean(1))
    short, ts = hear.get_timestamp_embeddings(torch.rand(1, 100), model)  # shorter than one hop
    assert short.shape[1] == 1 and ts.tolist() == [[0.0]]


def test_official_timestamps_are_the_wrapper_starts(checkpoints):
    model = hear.load_model(str(checkpoints["80x208p16x16"]), timestamps="official")
    _, ts = hear.get_timestamp_embeddings(torch.rand(3, 160000) * 2 - 1, model)
    expected = np.float32(np.arange(63) * (10.0 / 63 * 1000))
    assert ts.shape == (3, 63) and np.array_equal(ts[2].numpy(), expected)


@pytest.mark.parametrize("folder", GOLDEN_MODELS)
def test_official_modes_reproduce_the_official_wrapper(golden, folder):
    """Official .pth loaded as is, per-batch normalisation, span-start timestamps: the official
    runtime's get_timestamp_embeddings and get_scene_embeddings for every golden input."""
    model = hear.load_model(str(golden / folder / "checkpoint-0.pth"), normalization="batch",
                            timestamps="official", **golden_import_options(folder))
    assert model.embedder.checkpoint.config.model == golden_model_config(folder)
    for suffix in ["", "_len16000", "_len33120", "_len81760"]:
        expected = lambda name: np.load(golden / folder / f"{name}{suffix}.npy")
        waves = torch.from_numpy(np.load(golden / f"waves{suffix}.npy"))
        frames, ts = hear.get_timestamp_embeddings(waves, model)
        assert np.array_equal(ts.numpy(), expected("timestamps"))
        np.testing.assert_allclose(frames.numpy(), expected("feats"), atol=2e-5, rtol=0)
        scene = hear.get_scene_embeddings(waves, model)
        np.testing.assert_allclose(scene.numpy(), expected("scene"), atol=2e-5, rtol=0)


def test_twenty_minutes_in_bounded_encoder_batches(checkpoints):
    model = hear.load_model(str(checkpoints["80x208p16x16"]))
    sizes = []
    model.encoder.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    audio = torch.rand(1, 20 * 60 * 16000) * 2 - 1
    frames, ts = hear.get_timestamp_embeddings(audio, model)
    assert frames.shape[1] == ts.shape[1] == 7500 and ts[0, -1] == 160 * 7499 + 75
    assert sum(sizes) == 577 and max(sizes) <= 2048 // 66  # chunks per encoder call, whatever the length
    assert torch.isfinite(frames).all()


def test_bad_audio_is_a_clear_error(checkpoints):
    model = hear.load_model(str(checkpoints["80x208p16x16"]))
    with pytest.raises(ValueError, match="the HEAR 2021 API takes a float tensor \\(n_sounds, n_samples\\)"):
        hear.get_scene_embeddings(torch.rand(16000), model)
    with pytest.raises(ValueError, match="audio\\[1\\]: non-finite"):
        hear.get_scene_embeddings(torch.tensor([[0.1] * 400, [float("nan")] * 400]), model)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_runs_on_the_device_of_the_audio(checkpoints):
    model = hear.load_model(str(checkpoints["80x208p16x16"]))
    validate(hear, model, device="cuda")
    assert model.device.type == "cuda"
