"""Reconstruction snapshots during pre-training (training/snapshots.py): when they are drawn, what
they show, and that they leave the training itself untouched (bit-exact resume)."""

import json
import logging
import sys

import numpy as np
import pytest
import torch

from specmae.config import RunConfig
from specmae.schema import ConfigError
from specmae.training.corpus import corpus_from_waves
from specmae.training.pretrain import pretrain
from specmae.training.snapshots import snapshot_crops
from test_pretrain import tiny_run


def snapshot_steps(run_dir) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in (run_dir / "snapshots").glob("step-*.png"))


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """The tiny run (3 epochs of 6 steps) without snapshots."""
    return pretrain(tiny_run(), tmp_path_factory.mktemp("plain"), progress=False)


def test_snapshots_at_their_steps_and_training_unchanged(tmp_path, plain):
    shot = pretrain(tiny_run(snapshot_every=5), tmp_path / "shot", progress=False)
    assert snapshot_steps(tmp_path / "shot") == [5, 10, 15]
    assert not (plain.checkpoint.parent.parent / "snapshots").exists()
    for name, value in plain.model.state_dict().items():
        assert torch.equal(shot.model.state_dict()[name], value), name
    assert shot.model.training  # back in training mode after each snapshot
    png = (tmp_path / "shot" / "snapshots" / "step-00000010.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_resume_with_snapshots_is_bit_exact(tmp_path, plain):
    pretrain(tiny_run(snapshot_every=3), tmp_path / "cut", progress=False, max_steps=8)
    assert snapshot_steps(tmp_path / "cut") == [3, 6]
    # snapshot_every may change on resume: it does not change what is computed
    resumed = pretrain(tiny_run(snapshot_every=4), tmp_path / "cut", resume=True, progress=False)
    for name, value in plain.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    assert snapshot_steps(tmp_path / "cut") == [3, 6, 12, 16]
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["train"]["snapshot_every"] == 4


def test_snapshots_reach_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    pretrain(tiny_run(epochs=1, snapshot_every=3), tmp_path, progress=False)
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={IMAGES: 0}).Reload()
    images = events.Images("snapshots/reconstruction")
    assert [i.step for i in images] == [3, 6]
    assert images[0].width > 500 and images[0].height > 300 and images[0].encoded_image_string.startswith(b"\x89PNG")


def test_without_matplotlib_one_warning_and_no_snapshots(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib.image", None)  # import matplotlib.image raises ImportError
    with caplog.at_level(logging.WARNING):
        pretrain(tiny_run(epochs=1, snapshot_every=2), tmp_path, progress=False)
    warnings = [r for r in caplog.records if "snapshot_every" in r.getMessage()]
    assert len(warnings) == 1 and "matplotlib is not installed" in warnings[0].getMessage()
    assert not (tmp_path / "snapshots").exists()


def test_builtin_crops_are_held_out_and_fixed():
    cfg = tiny_run()
    crops, titles = snapshot_crops(cfg, corpus=None)
    again, _ = snapshot_crops(cfg, corpus=None)
    assert crops.shape == (3, 80, 96) and crops.dtype == np.float32 and len(titles) == 3
    np.testing.assert_array_equal(crops, again)
    assert all(t.startswith("held-out ") for t in titles)
    # not a crop of any training clip: the training corpus comes from train.seed, these from another seed
    from specmae.audio import synth
    waves, _ = synth.make_corpus(cfg.train.builtin_clips, seed=cfg.train.seed, sample_rate=16000)
    train = corpus_from_waves(waves, cfg.frontend)
    for crop in crops:
        first_frame = crop[:, 0]
        assert not np.any(np.all(np.isclose(train.shards[0], first_frame[None, :], atol=1e-4), axis=1))
    other = tiny_run(seed=1)
    assert not np.array_equal(snapshot_crops(other, corpus=None)[0], crops)


def test_prepared_corpus_crops_are_training_clips_chosen_by_the_seed():
    from specmae.audio import synth
    cfg = tiny_run()
    cfg.train.data = "some/prepared/corpus"
    waves, _ = synth.make_corpus(6, seed=5, sample_rate=16000)
    corpus = corpus_from_waves(waves, cfg.frontend)
    crops, titles = snapshot_crops(cfg, corpus)
    assert crops.shape == (3, 80, 96) and all(t.startswith("training clip 0000") for t in titles)
    for crop in crops:  # each crop is a run of consecutive frames of the corpus
        hits = np.flatnonzero(np.all(corpus.shards[0] == crop[:, 0][None, :], axis=1))
        assert any(np.array_equal(corpus.shards[0][h : h + 96].T, crop) for h in hits)
    np.testing.assert_array_equal(snapshot_crops(cfg, corpus)[0], crops)


def test_snapshot_every_is_validated():
    cfg = RunConfig()
    cfg.train.snapshot_every = -1
    with pytest.raises(ConfigError, match="train.snapshot_every"):
        cfg.validate()


def test_a_snapshot_that_cannot_be_written_warns_and_training_goes_on(tmp_path, caplog):
    from specmae.audio.normalize import NormStats
    from specmae.model.mae import MaskedAutoencoder
    from specmae.training.logs import TrainLogger
    from specmae.training.snapshots import reconstruction_snapshots

    cfg = tiny_run(snapshot_every=2)
    model = MaskedAutoencoder(cfg.model).train()
    logger = TrainLogger(tmp_path, main=False, progress=False, total=4, initial=0)  # no TensorBoard
    hook = reconstruction_snapshots(cfg, None, NormStats((-8.0,), (4.0,)), model, tmp_path, logger)
    assert "tensorboard is not installed" in caplog.text  # as the logger has no TensorBoard writer
    caplog.clear()
    (tmp_path / "snapshots").write_text("a file where the folder should be")
    hook(1)  # not a snapshot step
    assert not caplog.records
    hook(2)
    assert "step-00000002.png not written" in caplog.text and model.training
