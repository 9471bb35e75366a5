"""Masking strategies by property: counts, marginals, dispersion weighting, blocks, sgim."""

import numpy as np
import pytest
import torch
from torch import nn

from specmae.masking import (PATTERNS, STRATEGIES, Masker, MaskingConfig, dwm_masking, hint_exchange, hint_ratio, inverse_block_centres, inverse_block_masking, n_keep, patch_dispersion, pattern_masking, random_masking, sgim_masking, sgim_scores, structured_masking, time_strip_masking)
from specmae.model.presets import model_config
from specmae.schema import ConfigError
from specmae.model.vit import Encoder

# grid -> input (F, T): the 16x16, 16x4, strip and 8x16 presets, and a tiny grid.
GRIDS = {(5, 13): (80, 208), (5, 50): (80, 200), (1, 76): (80, 304), (10, 13): (80, 208), (2, 3): (32, 48)}


def tiny_encoder(grid=(5, 13), use_cls=True):
    F_, T_ = GRIDS[grid]
    pf, pt = F_ // grid[0], T_ // grid[1]
    cfg = model_config(f"{F_}x{T_}p{pf}x{pt}", "tiny", dim=16, depth=1, heads=2, use_cls=use_cls)
    return Encoder(cfg.encoder)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def visible_mask(ids, keep):
    """(B, L) ids_shuffle -> (B, L) bool, True = visible."""
    vis = torch.zeros(ids.shape, dtype=torch.bool)
    vis.scatter_(1, ids[:, :keep], True)
    return vis


def make_masker(strategy, grid, **kw):
    kw.setdefault("ratio", 0.5 if strategy in PATTERNS else 0.75)
    kw.setdefault("hint_ratio", 0.0)
    encoder = tiny_encoder(grid) if strategy == "sgim" else None
    return Masker(MaskingConfig(strategy=strategy, **kw), grid, encoder=encoder)


def checker_input(amplitudes, grid, FT):
    """(B, L) patch amplitudes a -> x (B, 1, F, T) whose patch p holds +-a_p in a checkerboard:
    mean 0, mean absolute deviation exactly a_p, variance a_p ** 2."""
    F_, T_ = FT
    pf, pt = F_ // grid[0], T_ // grid[1]
    sign = (torch.arange(pf)[:, None] + torch.arange(pt)[None]) % 2 * 2.0 - 1.0           # (pf, pt)
    a = amplitudes.view(-1, grid[0], 1, grid[1], 1)
    return (a * sign[None, None, :, None, :]).reshape(-1, 1, F_, T_) + 3.0


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_gives_permutations_with_same_seed_same_mask(strategy, grid):
    if strategy == "frequency-alternating" and grid[0] == 1:
        pytest.skip("one frequency row has no alternation")
    masker = make_masker(strategy, grid)
    x = torch.randn(6, 1, *GRIDS[grid])
    ids = masker(x, gen(3))
    L = grid[0] * grid[1]
    assert ids.shape == (6, L) and ids.dtype == torch.int64
    assert torch.equal(ids.sort(1).values, torch.arange(L).expand(6, -1))
    assert masker.n_keep == n_keep(L, masker.cfg.ratio)
    assert torch.equal(ids, masker(x, gen(3)))


@pytest.mark.parametrize("strategy", ["random", "dwm", "inverse-block", "time-strip", "row-column"])
def test_seed_changes_the_mask(strategy):
    masker = make_masker(strategy, (5, 50))
    x = torch.randn(4, 1, 80, 200)
    vis = [visible_mask(masker(x, gen(s)), masker.n_keep) for s in (1, 2)]
    assert not torch.equal(*vis)


def masked_frequency(masker, x, n, seed=0, **call):
    ids = masker(x.expand(n, -1, -1, -1), gen(seed), **call)
    return 1.0 - visible_mask(ids, masker.n_keep).float().mean(0)


@pytest.mark.parametrize("strategy", ["random", "dwm", "inverse-block", "sgim"])
def test_uniform_marginals_for_random_and_at_hint_ratio_one(strategy):
    grid, n = (5, 13), 1000 if strategy == "sgim" else 3000     # sgim: one eigh per sample
    amp = torch.arange(65.0).remainder(4)[None]             # strongly uneven dispersion
    x = checker_input(amp, grid, (80, 208) if strategy == "sgim" else (10, 26))
    hinted = make_masker(strategy, grid, hint_ratio=1.0)
    p = 1 - hinted.n_keep / 65
    tol = 5 * (p * (1 - p) / n) ** 0.5
    assert (masked_frequency(hinted, x, n) - p).abs().max() < tol
    if strategy in ("dwm", "inverse-block"):
        # without hints the same input is far from uniform, so the check above can fail
        bare = make_masker(strategy, grid, hint_ratio=0.0)
        assert (masked_frequency(bare, x, n) - p).abs().max() > 3 * tol
    # the schedule's hint ratio is 1 before its start epoch
    if strategy == "sgim":
        return
    sched = make_masker(strategy, grid, hint_ratio=None, hint_start_epoch=10)
    assert (masked_frequency(sched, x, n, epoch=9, total_epochs=20) - p).abs().max() < tol


@pytest.mark.parametrize("dispersion", ["mad", "var"])
def test_dwm_masks_in_proportion_to_dispersion(dispersion):
    grid, n = (5, 13), 20000
    amp = torch.arange(65.0).remainder(4)[None]              # levels 0, 1, 2, 3
    x = checker_input(amp, grid, (10, 26))                  # 2x2 patches keep 20000 draws cheap
    d = patch_dispersion(x, grid, dispersion)[0]
    torch.testing.assert_close(d, amp[0] if dispersion == "mad" else amp[0] ** 2)
    # One masked patch per draw: P(mask p) = w_p / sum(w) exactly.
    ids = dwm_masking(x.expand(n, -1, -1, -1), grid, 0.01, gen(), dispersion=dispersion)
    assert n_keep(65, 0.01) == 64
    freq = torch.bincount(ids[:, 64], minlength=65).float() / n
    expected = (d + 1e-12) / (d + 1e-12).sum()
    assert (freq - expected).abs().max() < 5 * (expected.max() / n) ** 0.5
    # At ratio 0.5 the masking frequency rises with the dispersion; flat patches stay visible.
    ids = dwm_masking(x.expand(n // 4, -1, -1, -1), grid, 0.5, gen(1), dispersion=dispersion)
    freq = 1 - visible_mask(ids, n_keep(65, 0.5)).float().mean(0)
    level = [freq[amp[0] == a].mean().item() for a in range(4)]
    assert level[0] == 0.0 and level[1] + 0.05 < level[2] < level[3] - 0.05


@pytest.mark.parametrize("grid", [(5, 13), (5, 50), (1, 76)])
def test_dwm_topk_masks_exactly_the_most_dispersed(grid):
    L = grid[0] * grid[1]
    amp = torch.stack([torch.randperm(L, generator=gen(s)).float() for s in range(4)])
    x = checker_input(amp, grid, GRIDS[grid])
    ids = dwm_masking(x, grid, 0.75, gen(), topk=True)
    keep = n_keep(L, 0.75)
    assert torch.equal(visible_mask(ids, keep), amp < keep)    # the L - keep largest are masked


def test_dwm_on_silent_input_is_finite_and_uniform():
    x = torch.zeros(4000, 1, 10, 26)
    assert torch.isfinite(torch.log(patch_dispersion(x, (5, 13)) + 1e-12)).all()
    ids = dwm_masking(x, (5, 13), 0.75, gen())
    freq = 1 - visible_mask(ids, 16).float().mean(0)
    assert (freq - 49 / 65).abs().max() < 5 * (0.25 * 0.75 / 4000) ** 0.5


def components(vis_2d):
    ndimage = pytest.importorskip("scipy.ndimage")
    return ndimage.label(vis_2d)[1]                          # 4-connectivity by default


@pytest.mark.parametrize("grid,ratio", [((5, 13), 0.75), ((5, 50), 0.75), ((10, 13), 0.6),
                                        ((1, 76), 0.75), ((5, 13), 0.3), ((2, 3), 0.5)])
def test_inverse_block_visible_patches_form_contiguous_blocks(grid, ratio):
    L, n = grid[0] * grid[1], 200
    ids = inverse_block_masking(torch.randn(n, 1, *GRIDS[grid]), grid, ratio, gen())
    vis = visible_mask(ids, n_keep(L, ratio)).view(n, *grid).numpy()
    n_c = inverse_block_centres(grid, ratio)
    counts = [components(v) for v in vis]
    assert max(counts) <= n_c
    rand = visible_mask(random_masking(torch.randn(n, 1, *GRIDS[grid]), grid, ratio, gen()), n_keep(L, ratio))
    if n_keep(L, ratio) > 3 * n_c:                           # random subsets are not blocks
        assert np.mean([components(v) > n_c for v in rand.view(n, *grid).numpy()]) > 0.5
    if n_c == 1:
        # one block, trimmed from the outside or grown outward: every row and every column
        # of the visible set is a single run
        for v in vis:
            for line in [*v, *v.T]:
                idx = np.flatnonzero(line)
                assert len(idx) == 0 or idx[-1] - idx[0] + 1 == len(idx)


@pytest.mark.parametrize("grid", [(2, 3), (1, 76), (5, 13)])
def test_inverse_block_bigger_than_grid_does_not_crash(grid):
    ids = inverse_block_masking(torch.randn(3, 1, *GRIDS[grid]), grid, 0.5, gen(), block=9)
    assert torch.equal(ids.sort(1).values, torch.arange(grid[0] * grid[1]).expand(3, -1))


def reference_sgim_scores(feat):
    """Per sample, in numpy float64: PCA by SVD, sign split, best cosine to the group means."""
    z = feat / np.linalg.norm(feat, axis=-1, keepdims=True)
    zc = z - z.mean(0)
    proj = zc @ np.linalg.svd(zc, full_matrices=False)[2][0]
    group = proj > proj.mean()
    centres = [z[g].mean(0) for g in (group, ~group)]
    return np.max([z @ c / np.linalg.norm(c) for c in centres], axis=0)


class FixedEncoder(nn.Module):
    """Returns given (B, 1+L, D) tokens; records whether autograd was on and the input dtype."""

    def __init__(self, tokens):
        super().__init__()
        self.tokens = tokens
        self.weight = nn.Parameter(torch.ones(1, dtype=torch.float64))
        self.calls = []

    def forward(self, x):
        self.calls.append((torch.is_grad_enabled(), x.dtype))
        return self.tokens * self.weight


def test_sgim_masks_lowest_scores_without_gradient():
    B, L, D = 8, 65, 12
    g = gen(5)
    # two object groups around e0 and e1, and 10 off-object patches along other axes
    base = torch.zeros(B, L, D, dtype=torch.float64)
    base[:, :30, 0] = 1.0
    base[:, 30:55, 1] = 1.0
    base[:, 55:, 2:] = torch.rand(B, 10, D - 2, generator=g, dtype=torch.float64)
    feats = base + 0.1 * torch.rand(B, L, D, generator=g, dtype=torch.float64)
    perm = torch.stack([torch.randperm(L, generator=g) for _ in range(B)])
    feats = torch.gather(feats, 1, perm[..., None].expand(-1, -1, D))
    enc = FixedEncoder(torch.cat([torch.randn(B, 1, D, dtype=torch.float64), feats], 1))
    ref = np.stack([reference_sgim_scores(f) for f in feats.numpy()])
    np.testing.assert_allclose(sgim_scores(feats).numpy(), ref, atol=1e-5)

    ratio = 0.75
    keep = n_keep(L, ratio)
    ids = Masker(MaskingConfig("sgim", ratio, hint_ratio=0.0), (5, 13), encoder=enc)(torch.randn(B, 1, 80, 208), gen())
    assert enc.calls == [(False, torch.float64)]
    masked = ~visible_mask(ids, keep)
    lowest = torch.from_numpy(np.argsort(ref, axis=1)[:, :L - keep])
    assert torch.equal(masked, torch.zeros_like(masked).scatter_(1, lowest, True))
    assert masked.gather(1, torch.argsort(perm, 1)[:, 55:]).all()     # off-object patches masked


@pytest.mark.parametrize("use_cls", [True, False])
def test_sgim_with_real_encoder_leaves_no_gradient(use_cls):
    enc = tiny_encoder((1, 76), use_cls=use_cls)
    x = torch.randn(3, 1, 80, 304, requires_grad=True)
    ids = sgim_masking(x, (1, 76), 0.75, gen(), encoder=enc)
    assert torch.equal(ids.sort(1).values, torch.arange(76).expand(3, -1))
    assert all(p.grad is None for p in enc.parameters()) and not ids.requires_grad
    assert sgim_masking(torch.zeros(2, 1, 80, 304), (1, 76), 0.75, gen(), encoder=enc).shape == (2, 76)


def test_hint_exchange_and_schedule():
    B, L, keep = 500, 65, 16
    ids = torch.arange(L).expand(B, -1)
    assert torch.equal(hint_exchange(ids, keep, 0.0, gen()), ids)
    out = hint_exchange(ids, keep, 0.5, gen())
    n_hint = int((L - keep) * 0.5)
    assert torch.equal(out.sort(1).values, ids)
    revealed = (out[:, :keep] >= keep).sum(1)                   # originally masked, now visible
    assert revealed.max() <= n_hint and revealed.float().mean() > 1
    cfg = MaskingConfig("dwm", hint_start_epoch=50, hint_exponent=2.0)
    assert hint_ratio(cfg, 49, 100) == 1.0
    assert hint_ratio(cfg, 50, 100) == pytest.approx(0.75)
    assert hint_ratio(cfg, 90, 100) == pytest.approx(0.19)
    assert hint_ratio(MaskingConfig("sgim", hint_ratio=0.3), 0, 100) == 0.3
    assert hint_ratio(MaskingConfig("random"), 99, 100) == 1.0
    assert hint_ratio(MaskingConfig("time-strip"), 99, 100) == 0.0


def test_analysis_patterns():
    x = torch.randn(5, 1, 80, 208)
    vis = visible_mask(pattern_masking(x, (10, 13), 0.5, gen(), "chessboard"), 65).view(5, 10, 13)
    f, t = torch.meshgrid(torch.arange(10), torch.arange(13), indexing="ij")
    assert torch.equal(vis, ((f + t) % 2 == 0).expand(5, -1, -1))
    vis = visible_mask(pattern_masking(x, (10, 13), 0.5, gen(), "frequency-alternating"), 65).view(5, 10, 13)
    assert torch.equal(vis, (f % 2 == 0).expand(5, -1, -1))
    vis = visible_mask(pattern_masking(torch.randn(5, 1, 80, 200), (5, 50), 0.5, gen(), "time-alternating"), 125)
    assert torch.equal(vis.view(5, 5, 50), (torch.arange(50) % 2 == 0).expand(5, 5, -1))
    # odd L = 65: 32 visible, all on the pattern's visible side (33 or 35 of them)
    for pattern, side in [("chessboard", (f + t) % 2 == 0), ("time-alternating", t % 2 == 0)]:
        vis = visible_mask(pattern_masking(x, (5, 13), 0.5, gen(), pattern), 32).view(5, 5, 13)
        assert (vis.sum((1, 2)) == 32).all() and not (vis & ~side[:5]).any()
    with pytest.raises(ValueError, match="0.5"):
        pattern_masking(x, (5, 13), 0.75, gen(), "chessboard")


@pytest.mark.parametrize("grid", [(5, 13), (5, 50), (10, 13), (1, 76)])
def test_time_strips_and_row_column_mask_whole_lines(grid):
    B, L = 50, grid[0] * grid[1]
    x = torch.randn(B, 1, *GRIDS[grid])
    keep = n_keep(L, 0.75)
    masked = ~visible_mask(time_strip_masking(x, grid, 0.75, gen()), keep).view(B, *grid)
    per_col = masked.sum(1)                                       # (B, N_T) masked rows per column
    partial = ((per_col > 0) & (per_col < grid[0])).sum(1)
    assert (partial <= 1).all() and (per_col == grid[0]).sum(1).min() >= (L - keep) // grid[0]
    masked = ~visible_mask(structured_masking(x, grid, 0.75, gen(), row_fraction=0.5), keep).view(B, *grid)
    full_rows = masked.all(2)                                     # (B, N_F)
    assert (full_rows.sum(1) == int(0.5 * (L - keep) / grid[1])).all()
    rest = masked & ~full_rows[:, :, None]
    per_col = rest.sum(1)
    live = grid[0] - full_rows.sum(1, keepdim=True)
    assert (((per_col > 0) & (per_col < live)).sum(1) <= 1).all()


@pytest.mark.parametrize("kwargs,message", [
    (dict(strategy="blocks"), "allowed"),
    (dict(strategy="dwm", dispersion="std"), "allowed"),
    (dict(ratio=1.0), r"\(0, 1\)"),
    (dict(ratio=0.999), "at least one visible"),
    (dict(strategy="chessboard"), "ratio 0.5"),
    (dict(strategy="dwm", hint_ratio=1.5), r"\[0, 1\]"),
    (dict(strategy="dwm", hint_exponent=0.0), "exponent"),
])
def test_bad_configs_fail_at_start_with_allowed_values(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Masker(MaskingConfig(**kwargs), (5, 13))


def test_bad_inputs_and_config_round_trip():
    with pytest.raises(ValueError, match="encoder"):
        Masker(MaskingConfig("sgim"), (5, 13))
    with pytest.raises(ValueError, match="at least one visible"):
        Masker(MaskingConfig(ratio=0.9), (2, 3))
    with pytest.raises(ValueError, match="divisible"):
        make_masker("dwm", (5, 13))(torch.randn(2, 1, 80, 200), gen())
    with pytest.raises(ValueError, match="masking: unknown field mask_ratio"):
        MaskingConfig.from_dict({"strategy": "dwm", "mask_ratio": 0.5})
    cfg = MaskingConfig("dwm", 0.6, "var", True, 0.25, 10, 3.0)
    assert MaskingConfig.from_dict(cfg.to_dict()) == cfg
