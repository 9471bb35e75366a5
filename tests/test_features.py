"""Frame and clip features: chunking, frame counts, timestamps, options, bad input, golden parity."""

import copy
import shutil

import numpy as np
import pytest
import torch

from conftest import GOLDEN_MODELS, golden_frontend_config, golden_import_options, golden_model_config
from specmae.audio import AudioError, FrontendConfig, resample
from specmae.checkpoint import save_checkpoint
from specmae.checkpoint.official import load_official
from specmae.features.chunking import embed_normalised, frame_features, frame_timestamps, num_frames, windows
from specmae.features import Embedder, load
from specmae.model.mae import MaskedAutoencoder
from specmae.model.presets import ModelConfig, model_config

SR = 16000


def tiny_config(preset="80x208p16x16", **kw):
    return model_config(preset, "tiny", dim=48, depth=3, heads=3, decoder_dim=32, decoder_depth=1,
                        decoder_heads=4, **kw)


def tiny_checkpoint(path, preset="80x208p16x16", norm_stats=(-7.0, 4.0), seed=0):
    """A small random specmae checkpoint folder at `path`."""
    cfg = tiny_config(preset)
    torch.manual_seed(seed)
    model = MaskedAutoencoder(cfg)
    config = dict(model=cfg.to_dict(), frontend=FrontendConfig().to_dict(), norm_stats=list(norm_stats),
                  masking={}, train={}, step=0)
    return save_checkpoint(path, model.state_dict(), config)


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    return load(tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny"))


def noise(seconds, seed=0, n=None):
    g = torch.Generator().manual_seed(seed)
    return 2 * torch.rand(n or int(seconds * SR), generator=g) - 1


@pytest.mark.parametrize("n_lms, patch_t, expected", [
    (1001, 16, 63), (101, 16, 7), (208, 16, 13), (512, 16, 32),   # golden T' of the 208-wide models
    (1001, 4, 251), (101, 4, 26), (208, 4, 52), (512, 4, 128),    # and of the 80x200p16x4 model
    (1, 16, 1), (16, 16, 1), (17, 16, 2)])
def test_frame_count_rule(n_lms, patch_t, expected):
    assert num_frames(n_lms, patch_t) == expected


def test_timestamps_are_exact_span_centres():
    ts = frame_timestamps(100_000, 16, 160, SR)
    assert torch.equal(ts, 160 * torch.arange(100_000, dtype=torch.float64) + 75)
    assert torch.equal(frame_timestamps(10, 4, 160, SR), 40 * torch.arange(10, dtype=torch.float64) + 15)


def test_top_level_load_accepts_a_run_folder(tmp_path):
    import specmae
    from specmae.checkpoint import commit_latest

    tiny_checkpoint(tmp_path / "run" / "checkpoints" / "step-00000010")
    commit_latest(tmp_path / "run" / "checkpoints", "step-00000010")
    model = specmae.load(tmp_path / "run")
    assert isinstance(model, specmae.Embedder) and not model.training and model.sample_rate == SR
    out = model.embed(noise(0.5).numpy(), SR)
    assert isinstance(out, specmae.Embeddings) and out.frames.shape == (4, 240)


def test_ten_seconds_gives_63_frames(embedder):
    out = embedder.embed(noise(10), SR)
    assert out.frames.shape == (63, embedder.embedding_size) == (63, 5 * 48)
    assert out.clip.shape == (240,) and out.frames.dtype == torch.float32
    torch.testing.assert_close(out.clip, out.frames.mean(0))
    assert torch.equal(out.timestamps, frame_timestamps(63, 16, 160, SR))


def test_clip_alone_equals_clip_in_a_batch(embedder):
    a, b, c = noise(3.3, 1), noise(0.7, 2), noise(7.1, 3)
    alone = embedder.embed(a, SR)
    mixed = embedder.embed([b, a, c], SR)
    torch.testing.assert_close(mixed.frames[1], alone.frames, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed.clip[1], alone.clip, atol=1e-5, rtol=1e-5)
    batch = embedder.embed(torch.stack([noise(2, 4), a[:32000], noise(2, 5)]), SR)
    torch.testing.assert_close(batch.frames[1], embedder.embed(a[:32000], SR).frames, atol=1e-5, rtol=1e-5)
    assert batch.timestamps.shape == batch.frames.shape[:2]


def test_long_clip_equals_its_chunks_encoded_one_by_one(embedder):
    lms = torch.randn(80, 3 * 208 + 100)            # 3 full chunks and a partial one
    out = embedder.embed_lms(lms * 4 - 7)            # stored stats: (x + 7) / 4 = lms back (nearly)
    x = (lms * 4 - 7 + 7) / 4
    padded = torch.nn.functional.pad(x, (0, 208 - 100))[None, None]
    chunks = [frame_features(embedder.encoder, padded[..., i * 208:(i + 1) * 208])[0] for i in range(4)]
    expected = torch.cat(chunks)[:num_frames(x.shape[-1], 16)]
    torch.testing.assert_close(out.frames, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_lms, chunks", [(208, 1), (416, 2), (417, 3), (1, 1)])
def test_no_chunk_of_pure_padding_is_encoded(n_lms, chunks):
    seen = []
    run = lambda x: (seen.append(x.shape[0]), torch.zeros(x.shape[0], 13, 2))[1]
    out = embed_normalised(run, [torch.randn(80, n_lms)], 208, 16, chunks_per_call=2)
    assert sum(seen) == chunks and max(seen) <= 2 and out[0].shape[0] == num_frames(n_lms, 16)


def test_windows_cover_every_clip_once_padded_with_zero():
    lms = [torch.randn(80, n) for n in (30, 208, 500)]
    groups = list(windows(lms, 208, 2))
    assert [x.shape[0] for x, _ in groups] == [2, 2, 1]          # 1 + 1 + 3 windows, at most 2 a call
    where = [w for _, ws in groups for w in ws]
    assert where == [(0, 0, 30), (1, 0, 208), (2, 0, 208), (2, 1, 208), (2, 2, 84)]
    x = torch.cat([x for x, _ in groups])[:, 0]
    assert torch.equal(torch.cat(list(x[2:]), dim=-1)[:, :500], lms[2]) and not x[4, :, 84:].any()
    assert torch.equal(x[0, :, :30], lms[0]) and not x[0, :, 30:].any()


def test_chunks_per_call_and_layers(embedder):
    wave = noise(6)
    small = Embedder(embedder.encoder, embedder.frontend.cfg, embedder.norm_stats, chunks_per_call=1)
    torch.testing.assert_close(small.embed(wave, SR).frames, embedder.embed(wave, SR).frames, atol=1e-5, rtol=1e-5)
    one = [embedder.embed(wave, SR, layers=l).frames for l in (0, 2)]
    torch.testing.assert_close(embedder.embed(wave, SR, layers=[0, -1]).frames, (one[0] + one[1]) / 2)
    cat = embedder.embed(wave, SR, layers=[0, 2], layer_mode="concat").frames
    assert torch.equal(cat, torch.cat(one, -1))
    with pytest.raises(ValueError, match="allowed 0..2"):
        embedder.embed(wave, SR, layers=3)
    with pytest.raises(ValueError, match="layer_mode"):
        embedder.embed(wave, SR, layer_mode="sum")


def test_outputs_can_feed_a_trained_probe(embedder):
    frames = embedder.embed(noise(1), SR).frames
    probe = torch.nn.Linear(frames.shape[-1], 2)
    probe(frames).sum().backward()
    assert probe.weight.grad is not None and not frames.requires_grad


def test_bf16_is_close_to_fp32(embedder):
    wave = noise(4)
    a, b = embedder.embed(wave, SR).frames, embedder.embed(wave, SR, precision="bf16").frames
    assert b.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(a, b, dim=-1).min() > 0.99


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_groups_equal_eager(embedder):
    # 10 s = 5 chunks in groups of 2: two full groups go through the compiled encoder, the last
    # chunk runs eagerly; the frames must not depend on which path encoded them.
    from torch._dynamo.utils import counters
    wave = noise(10)
    eager = Embedder(embedder.encoder, embedder.frontend.cfg, embedder.norm_stats, chunks_per_call=2)
    compiled = Embedder(embedder.encoder, embedder.frontend.cfg, embedder.norm_stats, chunks_per_call=2,
                        compile=True)
    before = counters["stats"]["unique_graphs"]
    for layers in (None, [0, 2]):
        torch.testing.assert_close(compiled.embed(wave, SR, layers=layers).frames,
                                   eager.embed(wave, SR, layers=layers).frames, atol=1e-4, rtol=1e-4)
    assert counters["stats"]["unique_graphs"] > before
    assert len(compiled._compiled) == 1


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 96000])
def test_any_rate_is_resampled_at_the_edge(embedder, rate):
    wave = noise(1.3, n=int(1.3 * rate)).numpy()
    out = embedder.embed(wave, rate)
    expected = embedder.embed(resample(wave, rate, SR), SR)
    assert torch.equal(out.frames, expected.frames)
    assert out.frames.shape[0] == num_frames(1 + len(resample(wave, rate, SR)) // 160, 16)


@pytest.mark.parametrize("name, wave", [
    ("silence", torch.zeros(SR)), ("dc", torch.full((SR,), 0.5)), ("clipped", torch.sign(noise(1))),
    ("one sample", torch.tensor([0.3])), ("float64", noise(1).double())])
def test_degenerate_audio_gives_finite_embeddings(embedder, name, wave):
    out = embedder.embed(wave, SR)
    assert torch.isfinite(out.frames).all() and out.frames.shape[0] == num_frames(1 + len(wave) // 160, 16)


def test_absurd_audio_is_refused_and_batch_mode_rejects_silence(embedder):
    with pytest.raises(AudioError, match="audio: samples up to 1e\\+30, far beyond full scale"):
        embedder.embed(noise(1) * 1e30, SR)
    with pytest.raises(AudioError, match="lms\\[0\\]: log-mel is not finite"):
        embedder.embed_lms(torch.full((80, 100), float("inf")))
    with pytest.raises(ValueError, match="log-mel is constant"):
        embedder.embed(torch.zeros(2, SR), SR, normalization="batch")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(embedder):
    wave = noise(5)
    cuda = copy.deepcopy(embedder).to("cuda")
    out = cuda.embed(wave.cuda(), SR)
    assert out.frames.device.type == "cuda"
    torch.testing.assert_close(out.frames.cpu(), embedder.embed(wave, SR).frames, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cuda.embed(wave, SR).frames.cpu(), out.frames.cpu())  # CPU audio, CUDA model


# --- golden: the official MSM-MAE runtime on tiny models ----------------------------------------

SETS = ["", "_len16000", "_len33120", "_len81760"]


def golden_embedder(golden, folder, suffix):
    stats = np.load(golden / f"norm_stats{suffix}.npy")
    model, config = load_official(golden / folder / "checkpoint-0.pth", norm_stats=stats,
                                  **golden_import_options(folder))
    assert ModelConfig.from_dict(config["model"]) == golden_model_config(folder)
    frontend = FrontendConfig.from_dict(config["frontend"])
    assert frontend == golden_frontend_config(folder)
    return Embedder(model.encoder, frontend, config["norm_stats"])


@pytest.mark.parametrize("suffix", SETS)
@pytest.mark.parametrize("folder", GOLDEN_MODELS)
def test_golden_features_layers_and_frame_count(golden, folder, suffix):
    """From the stored log-mel and statistics (the README's bit-level route), all layers."""
    embedder = golden_embedder(golden, folder, suffix)
    load_np = lambda name: np.load(golden / folder / f"{name}{suffix}.npy")
    lms = torch.from_numpy(np.load(golden / f"lms{suffix}.npy"))[:, 0]
    depth = embedder.encoder.cfg.depth
    out = embedder.embed_lms(lms, layers=list(range(depth)), layer_mode="concat")
    layers = torch.stack(out.frames.chunk(depth, dim=-1))
    torch.testing.assert_close(layers, torch.from_numpy(load_np("feats_layers")), atol=2e-5, rtol=0)
    torch.testing.assert_close(layers[-1], torch.from_numpy(load_np("feats")), atol=2e-5, rtol=0)
    torch.testing.assert_close(layers[-1].mean(1), torch.from_numpy(load_np("scene")), atol=2e-5, rtol=0)
    official_ts = load_np("timestamps")
    assert out.timestamps.shape == official_ts.shape
    patch_t = embedder.encoder.cfg.patch_t
    assert torch.equal(out.timestamps[0], (10 * (torch.arange(official_ts.shape[1]) * patch_t)
                                           + 5 * (patch_t - 1)).double())


@pytest.mark.parametrize("suffix", SETS)
@pytest.mark.parametrize("folder", GOLDEN_MODELS)
def test_golden_end_to_end_from_waveforms(golden, folder, suffix):
    """Waveforms through our front-end, stored statistics (default) and per-batch (official) mode."""
    embedder = golden_embedder(golden, folder, suffix)
    waves = torch.from_numpy(np.load(golden / f"waves{suffix}.npy"))
    feats = torch.from_numpy(np.load(golden / folder / f"feats{suffix}.npy"))
    scene = torch.from_numpy(np.load(golden / folder / f"scene{suffix}.npy"))
    for mode in ("stored", "batch"):
        out = embedder.embed(waves, SR, normalization=mode)
        torch.testing.assert_close(out.frames, feats, atol=2e-5, rtol=0)
        torch.testing.assert_close(out.clip, scene, atol=2e-5, rtol=0)
