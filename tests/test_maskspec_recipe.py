"""The MaskSpec recipe end to end at 32 kHz / 128 mel bins: prepare, pretrain, embed, evaluate,
HEAR, export, with a tiny model; and the scaled-down demo config learns."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from specmae import checkpoint, hear
from specmae.audio import synth
from specmae.config import compose, read_config_file
from specmae.evaluation.evaluate import builtin_comparison
from specmae.features import load
from specmae.features.export import export, load_exported
from specmae.training.pretrain import pretrain

TINY = ["--config", "maskspec-demo", "--quiet", "--workers", "0", "--batch-size", "8", "--warmup-epochs", "1",
        "--set", "model.encoder.dim=48", "--set", "model.encoder.depth=2", "--set", "model.encoder.heads=3",
        "--set", "model.decoder.dim=32", "--set", "model.decoder.depth=1", "--set", "model.decoder.heads=4"]


def specmae(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "specmae.cli", *args], capture_output=True, text=True)
    if check and proc.returncode:
        raise AssertionError(proc.stderr[-3000:])
    return proc


@pytest.fixture(scope="module")
def maskspec_run(tmp_path_factory):
    """A folder of 22.05 kHz clips prepared with the MaskSpec front-end and pre-trained on (1 epoch)."""
    root = tmp_path_factory.mktemp("maskspec")
    synth.write_corpus(root / "audio", 16, seed=5, duration=1.5, sample_rate=22050)
    specmae("prepare", str(root / "audio"), "--out", str(root / "corpus"), "--config", "maskspec-demo",
            "--workers", "0")
    specmae("pretrain", str(root / "corpus"), "--out", str(root / "run"), "--epochs", "2", "--no-report", *TINY)
    return root


def test_prepare_and_pretrain_keep_the_maskspec_front_end_and_per_bin_statistics(maskspec_run):
    index = json.loads((maskspec_run / "corpus" / "manifest.json").read_text())
    assert index["frontend"]["kind"] == "maskspec" and index["frontend"]["sample_rate"] == 32000
    ck = checkpoint.read(maskspec_run / "run")
    assert ck.config.frontend.kind == "maskspec" and ck.config.model.encoder.n_mels == 128
    assert ck.norm_stats.per_bin and len(ck.norm_stats.mean) == 128
    # Top bands above the content of 22.05 kHz audio (resampled to 32 kHz) sit at silence.
    assert ck.norm_stats.mean[-1] == pytest.approx(ck.config.frontend.silence, abs=0.05)
    assert ck.norm_stats.mean[10] > ck.norm_stats.mean[-1] + 0.3


def test_a_corpus_of_another_front_end_is_refused_before_training(maskspec_run, tmp_path):
    proc = specmae("pretrain", str(maskspec_run / "corpus"), "--out", str(tmp_path / "run"), "--epochs", "1",
                   "--no-report", "--config", "demo", "--quiet", "--workers", "0", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "kind" in proc.stderr and "maskspec" in proc.stderr and "msm-mae" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_embed_evaluate_hear_and_export_at_32_khz(maskspec_run, tmp_path):
    run = maskspec_run / "run"
    embedder = load(run)
    assert embedder.sample_rate == 32000 and embedder.embedding_size == 8 * 48
    wave = np.random.default_rng(0).uniform(-0.3, 0.3, 16000 * 3).astype(np.float32)
    at_16k = embedder.embed(wave, 16000)                      # resampled at the edge
    assert at_16k.frames.shape == (19, 384) and torch.isfinite(at_16k.frames).all()

    specmae("embed", str(run), str(maskspec_run / "audio"), "--out", str(tmp_path / "emb"), "--quiet")
    files = sorted((tmp_path / "emb").rglob("*.npz"))
    assert len(files) == 16
    with np.load(files[0]) as f:
        assert f["clip"].shape == (384,)

    model = hear.load_model(str(run))
    audio = torch.from_numpy(np.stack([wave[:24000], wave[24000:]]))  # 0.75 s each at 32 kHz
    assert hear.get_scene_embeddings(audio, model).shape == (2, 384)
    frames, stamps = hear.get_timestamp_embeddings(audio, model)
    assert frames.shape[:2] == stamps.shape and float(stamps[0, 1] - stamps[0, 0]) == pytest.approx(160.0)
    with pytest.raises(ValueError, match="normalization 'batch' reproduces the official MSM-MAE wrapper"):
        embedder.embed(wave, 16000, normalization="batch")

    path = export(run, tmp_path / "enc.pt2")
    module, meta = load_exported(path)
    lms = embedder.frontend(torch.from_numpy(wave[:32000 * 96 // 100]))[None, :, :96]
    assert meta["frontend"]["kind"] == "maskspec"
    reference = embedder.embed_lms(lms[0]).frames
    torch.testing.assert_close(module(lms)[0], reference, atol=1e-5, rtol=1e-5)


def test_the_maskspec_demo_recipe_learns(tmp_path):
    """The demo config's recipe, smaller: the loss falls and the probe beats the random-init twin."""
    cfg = compose([read_config_file("maskspec-demo"), {
        "model": {"encoder": {"dim": 96, "depth": 3, "heads": 3}, "decoder": {"dim": 64, "depth": 1, "heads": 4}},
        "train": {"builtin_clips": 480, "epochs": 10, "warmup_epochs": 1, "batch_size": 32, "checkpoint_every": 1000,
                  "log_every": 1}},
    ]).validate()
    result = pretrain(cfg, tmp_path, progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "log.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:5])
    scores = builtin_comparison(result.checkpoint, n_clips=360)
    assert scores["pre-trained"] > scores["random init"], scores


def test_reconstructions_of_a_normalised_target_model_are_drawn_at_the_true_levels():
    """A norm_pix_loss model predicts patches standardised per patch: a perfect prediction,
    pasted back by visualize.reconstruct, must give the input itself."""
    from specmae.model.mae import build_mae
    from specmae.model.presets import model_config
    from specmae.visualize import reconstruct

    model = build_mae(model_config("128x96p16x16", "tiny", depth=1, decoder_depth=1, decoder_norm_pix_loss=True,
                                   qkv_bias="full", decoder_pos="2d"), seed=0).eval()
    x = torch.randn(2, 1, 128, 96, generator=torch.Generator().manual_seed(0)) * 3 + 1
    target = model.patchify(x)
    perfect = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5

    def forward(x, ratio, ids_shuffle=None, generator=None):
        mask = torch.zeros(x.shape[0], model.cfg.encoder.num_patches)
        mask[:, ::2] = 1
        return torch.tensor(0.0), perfect, mask

    model.forward = forward
    recon, mask, _ = reconstruct(model, x, 0.75)
    torch.testing.assert_close(recon, x, atol=1e-4, rtol=1e-4)
