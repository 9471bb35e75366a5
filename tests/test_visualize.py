"""Visual analysis: the pieces (masks, pasting, sweep, attention), the page, `specmae visualize`."""

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from specmae.audio import FrontendConfig
from specmae.checkpoint import load, save_checkpoint
from specmae.cli import main
from specmae.config import FinetuneConfig, FinetuneInfo
from specmae.masking import PATTERNS, MaskingConfig, n_keep
from specmae.model.classifier import Classifier
from specmae.model.mae import MaskedAutoencoder, build_mae, hidden_mask
from specmae.model.presets import model_config
from specmae.visualize import VisualizeOptions, analysis, visualize_clips

TINY = dict(dim=48, depth=2, heads=3, decoder_dim=32, decoder_depth=1, decoder_heads=4)
FAST = dict(draws=2, sweep_ratios=(0.5, 0.75), sweep_visible=(1,), griffin_lim_iters=2)


def tiny_mae(preset="80x96p16x16", seed=0, **kw) -> MaskedAutoencoder:
    return build_mae(model_config(preset, "tiny", **TINY, **kw), seed=seed).eval()


def save_tiny(path: Path, model: torch.nn.Module, cfg, frontend=None, norm_stats=(-7.0, 4.0), **extra) -> Path:
    frontend = frontend or FrontendConfig()
    config = dict(model=cfg.to_dict(), frontend=frontend.to_dict(), norm_stats=list(norm_stats), **extra)
    return save_checkpoint(path, model.state_dict(), config)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    model = tiny_mae()
    return save_tiny(tmp_path_factory.mktemp("ck") / "tiny", model, model.cfg)


def tone(seconds: float, rate: int = 16000, freq: float = 440.0, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).normal(0, 0.01, t.shape)
    return (0.3 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


def write_wav(path: Path, wave: np.ndarray, rate: int = 16000) -> Path:
    sf.write(path, wave, rate)
    return path


def x_batch(model, batch=2, seed=0) -> torch.Tensor:
    enc = model.cfg.encoder
    return torch.randn(batch, 1, enc.n_mels, enc.n_frames, generator=torch.Generator().manual_seed(seed))


# --- the pieces ----------------------------------------------------------------------------------


@pytest.mark.parametrize("norm_pix", [False, True])
def test_visible_patches_pasted_back_reproduce_the_input_exactly(norm_pix):
    model = tiny_mae(decoder_norm_pix_loss=norm_pix)
    x = x_batch(model, 3)
    gen = torch.Generator().manual_seed(0)
    for strategy in analysis.strategies(MaskingConfig(), model.cfg.encoder.grid):
        ids = analysis.strategy_ids(x, model.encoder, MaskingConfig(), strategy, gen)
        keep = n_keep(ids.shape[1], 0.75)
        rec = analysis.reconstruct_ids(model, x, ids, keep)
        visible = rec.mask == 0
        assert visible.sum(1).tolist() == [keep] * 3
        out, inp = model.patchify(rec.output), model.patchify(x)
        assert torch.equal(out[visible], inp[visible])
        assert not torch.equal(out[~visible], inp[~visible])
        assert float(rec.error.max()) > 0 and rec.mse.shape == (3,)
        assert torch.equal(model.patchify(rec.error)[visible], torch.zeros_like(inp[visible]))


@pytest.mark.parametrize("cls", [True, False])
def test_attention_rows_sum_to_one_and_are_what_the_block_applies(cls):
    model = tiny_mae(use_cls=cls, decoder_official_no_cls_quirk=not cls)
    x = x_batch(model)
    enc, L = model.encoder, model.cfg.encoder.num_patches
    probs = enc.attention_maps(x)
    assert probs.shape == (2, 3, L + cls, L + cls)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 3, L + cls))
    # The probabilities applied to the values give the block's own attention output.
    block = enc.blocks[-1]
    h = block.norm1(enc.blocks[0](enc.tokens(x)))
    B, N, C = h.shape
    v = torch.nn.functional.linear(h, block.attn.qkv.weight, block.attn.qkv_bias())[..., 2 * C:]
    v = v.view(B, N, 3, C // 3).transpose(1, 2)
    mixed = block.attn.proj((probs @ v).transpose(1, 2).reshape(B, N, C))
    torch.testing.assert_close(mixed, block.attn(h), atol=1e-5, rtol=1e-4)
    mean = analysis.attention(enc, x)
    ref = "cls" if cls else (1, 2)
    amap = analysis.attention_from(mean[0], ref, model.cfg.encoder.grid, enc.num_prefix)
    assert amap.shape == model.cfg.encoder.grid and float(amap.sum()) <= 1 + 1e-5
    if not cls:
        assert float(amap.sum()) == pytest.approx(1, abs=1e-5)


@pytest.mark.parametrize("L", [30, 65, 100, 160, 250])
def test_sweep_steps_have_the_stated_visible_counts(L):
    steps = analysis.sweep_steps(L)
    for ratio, keep in steps:
        assert n_keep(L, ratio) == keep and 0.4 <= ratio < 1
    visible = [k for _, k in steps]
    assert visible == sorted(visible, reverse=True) and len(set(visible)) == len(visible)
    assert {1, 2, 5, 10} <= set(visible)
    assert (0.99 in [r for r, _ in steps]) == (int(L * 0.01) >= 1)
    if L >= 100:
        assert dict(steps)[0.99] == int(L * (1 - 0.99))


def test_sweep_reconstructions_keep_the_stated_counts_and_nest():
    model = tiny_mae("80x320p16x16")   # 100 patches: 0.99 leaves one visible
    x = x_batch(model, 1)
    steps = analysis.sweep(model, x, torch.Generator().manual_seed(0))
    assert [rec.visible for _, rec in steps] == [k for _, k in analysis.sweep_steps(100)]
    assert any(r == 0.99 and rec.visible == 1 for r, rec in steps)
    for (_, a), (_, b) in zip(steps, steps[1:]):
        assert bool(((b.mask == 0) <= (a.mask == 0)).all())   # visible sets shrink


@pytest.mark.parametrize("preset", ["80x96p16x16", "80x208p16x16"])   # even and odd column counts
def test_patterned_masks_have_ratio_one_half(preset):
    model = tiny_mae(preset)
    x, grid = x_batch(model, 2), model.cfg.encoder.grid
    L = grid[0] * grid[1]
    for pattern in PATTERNS:
        ids = analysis.pattern_ids(x, grid, pattern, torch.Generator().manual_seed(0))
        mask = hidden_mask(torch.argsort(ids, dim=1), n_keep(L, 0.5))
        assert mask.sum(1).tolist() == [L - n_keep(L, 0.5)] * 2
    ids = analysis.pattern_ids(x, grid, "time-alternating", torch.Generator())
    if grid[1] % 2 == 0:   # an even number of columns: exactly the even columns are visible
        visible = (hidden_mask(torch.argsort(ids, dim=1), L // 2)[0] == 0).reshape(grid)
        assert bool(visible[:, ::2].all()) and not bool(visible[:, 1::2].any())


def test_refs_and_segments_are_checked():
    model = tiny_mae(use_cls=False, decoder_official_no_cls_quirk=True)
    assert analysis.parse_ref("CLS") == "cls" and analysis.parse_ref(" 3,1") == (3, 1)
    with pytest.raises(ValueError, match="expected 'cls', 'loudest' or 't,f'"):
        analysis.parse_ref("3;1")
    with pytest.raises(ValueError, match=r"--ref 6,0: outside the patch grid of 6 time columns \(t = 0..5\)"):
        analysis.check_ref((6, 0), model.encoder)
    with pytest.raises(ValueError, match="no \\[CLS\\] token"):
        analysis.check_ref("cls", model.encoder)
    from specmae.visualize.segments import parse_segments
    assert parse_segments("all") == "all" and parse_segments("3,1,3") == [0, 2]
    for bad in ("0", "two", ""):
        with pytest.raises(ValueError, match="--segments"):
            parse_segments(bad)
    from specmae.audio import AudioError, build_frontend
    from specmae.audio.stream import Clip
    from specmae.visualize.segments import choose_segments, read_segment
    fe = FrontendConfig()
    front, wave = build_frontend(fe), tone(2.5)   # 251 frames: two 96-frame segments and 59 frames
    clip = Clip("x.wav", wave, 16000)
    assert choose_segments(clip, front, 96, 16, "all") == ([0, 1, 2], 3)
    last = read_segment(clip, front, 96, 2, 3)
    assert last.real_frames == 59 and (last.lms[:, 59:] == fe.silence).all() and last.end == 2.5
    torch.testing.assert_close(torch.from_numpy(last.lms[:, :59]), front(torch.from_numpy(wave))[:, 192:],
                               atol=1e-5, rtol=0)
    assert np.array_equal(last.wave, wave[192 * 160:])
    with pytest.raises(AudioError, match=r"x.wav: segment 4 asked for, but its 2.5 s hold 3 segment\(s\) of 96"):
        choose_segments(clip, front, 96, 16, [3])
    with pytest.raises(AudioError, match=r"x.wav: 0.05 s of audio gives 6 log-mel frames, fewer than one 16-frame"):
        choose_segments(Clip("x.wav", tone(0.05), 16000), front, 96, 16, "first")


# --- the whole analysis --------------------------------------------------------------------------


def page_links(index: Path) -> list[str]:
    return re.findall(r"(?:src)='([^']+)'", index.read_text())


@pytest.fixture
def quick_inversion(monkeypatch):
    """Silence of the right length instead of Griffin-Lim, for tests about files, not sound
    (test_checkpoint_without_cls... and the command's test run the real one)."""
    import specmae.audio.invert as invert

    monkeypatch.setattr(invert, "invert_lms", lambda lms, fe, n_iter, seed: np.zeros(
        (lms.shape[1] - 1) * fe.hop_length, np.float32))


def test_every_file_written_and_the_page_links_only_existing_files(ckpt, tmp_path, quick_inversion):
    clips = [("tone a", tone(1.2)), ("tone/b.wav", tone(0.3, freq=880, seed=1))]
    summary = visualize_clips(ckpt, clips, tmp_path / "out", VisualizeOptions(segments="all", **FAST))
    out = tmp_path / "out"
    # 1.2 s = 121 log-mel frames: 96 + 25, padded to 96; 0.3 s = 31 frames
    assert summary.segments == 3 and not summary.failed
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert written == {p.relative_to(out).as_posix() for p in summary.files}
    seg = {"attention.png", "patterns.png", "sweep.png", "input.wav", "input-mel.wav",
           *(f"masks-{s}.png" for s in analysis.STRATEGIES), *(f"recon-{s}.wav" for s in analysis.STRATEGIES),
           *(f"recon-{p}.wav" for p in PATTERNS)}
    folders = ["01-tone-a/segment-1", "01-tone-a/segment-2", "02-b/segment-1"]
    assert written == {"index.html", "mse-vs-ratio.png"} | {f"{f}/{n}" for f in folders for n in seg}
    links = page_links(out / "index.html")
    assert set(links) == written - {"index.html"}
    for wav in (p for p in summary.files if p.suffix == ".wav"):
        info = sf.info(wav)
        assert info.samplerate == 16000 and info.frames > 0


def test_the_same_seed_gives_the_same_files(ckpt, tmp_path):
    clips = [("a", tone(1.2))]
    options = dict(FAST, strategies=["random", "dwm"], segments="first", audio=False)
    a = visualize_clips(ckpt, clips, tmp_path / "a", VisualizeOptions(seed=3, **options))
    b = visualize_clips(ckpt, clips, tmp_path / "b", VisualizeOptions(seed=3, **options))
    c = visualize_clips(ckpt, clips, tmp_path / "c", VisualizeOptions(seed=4, **options))
    names = lambda s, root: {p.relative_to(root): p.read_bytes() for p in s.files}   # noqa: E731
    assert names(a, tmp_path / "a") == names(b, tmp_path / "b")
    masks = Path("01-a/segment-1/masks-random.png")
    assert names(a, tmp_path / "a")[masks] != names(c, tmp_path / "c")[masks]


def test_checkpoint_without_decoder_draws_attention_only(tmp_path, caplog, quick_inversion):
    cfg = model_config("80x96p16x16", "tiny", **TINY)
    info = FinetuneInfo(labels=["x", "y"], config=FinetuneConfig.from_dict({"model": {"n_frames": 64}}))
    torch.manual_seed(0)
    head = Classifier(cfg.encoder, 2, info.config.model)
    path = save_tiny(tmp_path / "ft", head, cfg, finetune=info.to_dict())
    summary = visualize_clips(path, [("a", tone(1.0))], tmp_path / "out", VisualizeOptions(**FAST))
    names = sorted(p.name for p in summary.files)
    assert names == ["attention.png", "index.html", "input-mel.wav", "input.wav"]
    assert "no decoder" in (tmp_path / "out" / "index.html").read_text()
    assert sum("no decoder" in r.getMessage() for r in caplog.records) == 1


def test_checkpoint_without_cls_and_per_bin_maskspec_statistics(tmp_path):
    model = tiny_mae("128x64p16x16", use_cls=False, decoder_official_no_cls_quirk=True)
    frontend = FrontendConfig.maskspec()
    stats = [[-0.5 + 0.01 * i for i in range(128)], [1.0 + 0.001 * i for i in range(128)]]
    path = save_tiny(tmp_path / "ms", model, model.cfg, frontend, stats)
    assert load(path).norm_stats.per_bin
    summary = visualize_clips(path, [("a", tone(1.0, rate=32000))], tmp_path / "out",
                              VisualizeOptions(strategies=["random"], refs=["0,0", "loudest"], patterns=False,
                                               sweep=False, **FAST))
    assert summary.segments == 1
    assert sf.info(tmp_path / "out/01-a/segment-1/recon-random.wav").samplerate == 32000


# --- the command ---------------------------------------------------------------------------------


def run_cli(capsys, *args) -> tuple[int, str, str]:
    try:
        main(["visualize", *map(str, args)])
        code = 0
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_command_writes_the_page_and_reports_bad_inputs(ckpt, tmp_path, capsys):
    good = write_wav(tmp_path / "good.wav", tone(1.5))
    short = write_wav(tmp_path / "short.wav", tone(0.05))    # 6 frames, a patch is 16
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really")
    fast = ["--draws", "1", "--strategies", "random", "--no-sweep", "--no-patterns", "--griffin-lim-iters", "2"]

    code, out, err = run_cli(capsys, ckpt, good, "--out", tmp_path / "v", *fast)
    assert code == 0 and "open" in out and (tmp_path / "v/index.html").is_file()
    for link in page_links(tmp_path / "v/index.html"):
        assert (tmp_path / "v" / link).is_file()

    code, out, err = run_cli(capsys, ckpt, good, "--out", tmp_path / "v", *fast)
    assert code == 2 and "already holds files" in err and "--overwrite" in err

    for bad, words in [(short, "fewer than one 16-frame patch"), (broken, "cannot decode audio")]:
        code, out, err = run_cli(capsys, ckpt, bad, "--out", tmp_path / f"{bad.stem}-out", *fast)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert str(bad) in err and words in err

    code, out, err = run_cli(capsys, ckpt, good, "--out", tmp_path / "ref", "--ref", "7,0", *fast)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--ref 7,0: outside the patch grid" in err
    assert not (tmp_path / "ref").exists()

    code, out, err = run_cli(capsys, ckpt, good, broken, short, "--out", tmp_path / "mixed", *fast)
    assert code == 1 and f"failed: {broken}" in out and f"failed: {short}" in out
    page = (tmp_path / "mixed/index.html").read_text()
    assert "broken.wav" in page and "short.wav" in page and "good" in page


def test_the_page_loads_every_figure_and_sound_in_a_browser(ckpt, tmp_path, quick_inversion):
    from browser import check_page, require_chromium

    require_chromium()
    summary = visualize_clips(ckpt, [("a tone", tone(1.0)), ("b", tone(0.4, freq=660))], tmp_path / "out",
                              VisualizeOptions(strategies=["random"], **FAST))
    result = check_page(summary.index)
    assert result.title == "specmae visual analysis"
    assert not result.failed, result.failed
    assert len(result.images) == sum(p.suffix == ".png" for p in summary.files)
    assert len(result.audio) == sum(p.suffix == ".wav" for p in summary.files)
