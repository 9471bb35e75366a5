"""Masking strategies for masked spectrogram modelling (options: docs/configuration.md).

A strategy maps a batch x: (B, 1, F, T) of normalised log-mel and its patch grid (N_F, N_T)
to ids_shuffle: (B, L) int64, L = N_F * N_T: per sample, a permutation of patch indices whose
first `n_keep(L, ratio)` entries are the visible patches. Patches are numbered row-major over
(frequency row, time column): index = f_row * N_T + t_col. Every sample keeps exactly the same
count, so the encoder input stays a dense (B, n_keep, D) tensor. Every function is vectorised
over the batch on x.device and draws all its randomness from `generator` (a generator on
x.device, or None for torch's default one): the same seed gives the same masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .schema import ConfigError, from_dict, to_dict

PATTERNS = ("time-alternating", "frequency-alternating", "chessboard")
HINTED = ("dwm", "inverse-block", "sgim")  # strategies that take the hint exchange
STRATEGIES = ("random", *HINTED, *PATTERNS, "time-strip", "row-column")
DISPERSIONS = ("mad", "var")


def n_keep(num_patches: int, ratio: float) -> int:
    """Visible patches per sample: floor(L * (1 - ratio)), as the official code."""
    if not 0.0 < ratio < 1.0:
        raise ConfigError(f"mask ratio {ratio} must be in (0, 1)")
    keep = int(num_patches * (1 - ratio))
    if keep < 1 or keep >= num_patches:
        raise ConfigError(
            f"mask ratio {ratio} leaves {keep} of {num_patches} patches visible; "
            f"it must leave at least one visible and one masked patch")
    return keep


def ids_from_noise(noise: Tensor) -> Tensor:
    """(B, L) scores -> (B, L) permutation, lowest score first (first n_keep visible)."""
    return torch.argsort(noise, dim=1)


def _check(x: Tensor, grid: tuple[int, int], ratio: float) -> int:
    """Validate x: (B, 1, F, T) against the grid (N_F, N_T) and the ratio; return n_keep."""
    n_f, n_t = grid
    if x.ndim != 4 or x.shape[1] != 1 or x.shape[2] % n_f or x.shape[3] % n_t:
        raise ValueError(f"x: expected (B, 1, F, T) with F divisible by {n_f} and T by {n_t} "
                         f"(patch grid {n_f}x{n_t}), got {tuple(x.shape)}")
    return n_keep(n_f * n_t, ratio)


def _coords(grid: tuple[int, int], device) -> tuple[Tensor, Tensor]:
    """(L,) frequency row and (L,) time column of each patch index."""
    idx = torch.arange(grid[0] * grid[1], device=device)
    return idx // grid[1], idx % grid[1]


def _rand(shape, device, generator) -> Tensor:
    return torch.rand(shape, device=device, generator=generator)


def _order(key: Tensor, generator: torch.Generator | None) -> Tensor:
    """(B, L) keys -> ids_shuffle sorted by ascending key (lowest visible), ties in random order."""
    perm = torch.argsort(_rand(key.shape, key.device, generator), dim=1)
    order = torch.argsort(torch.gather(key, 1, perm), dim=1, stable=True)
    return torch.gather(perm, 1, order)


def _shuffle(ids: Tensor, generator: torch.Generator | None) -> Tensor:
    """Shuffle each row of (B, n) independently."""
    return torch.gather(ids, 1, torch.argsort(_rand(ids.shape, ids.device, generator), dim=1))


def random_masking(x: Tensor, grid: tuple[int, int], ratio: float,
                   generator: torch.Generator | None = None) -> Tensor:
    """MAE's uniform random subset. x: (B, 1, F, T); returns ids_shuffle (B, N_F*N_T)."""
    _check(x, grid, ratio)
    noise = torch.rand(x.shape[0], grid[0] * grid[1], device=x.device, generator=generator)
    return ids_from_noise(noise)


def patch_dispersion(x: Tensor, grid: tuple[int, int], kind: str = "mad") -> Tensor:
    """x: (B, 1, F, T) -> (B, L) float32 dispersion of each patch's p_f*p_t values.

    'mad': mean absolute deviation from the patch mean; 'var': variance (population).
    """
    B, _, n_mels, n_frames = x.shape
    n_f, n_t = grid
    p = x.float().reshape(B, n_f, n_mels // n_f, n_t, n_frames // n_t).transpose(2, 3)
    dev = p.reshape(B, n_f * n_t, -1) - p.reshape(B, n_f * n_t, -1).mean(-1, keepdim=True)
    return dev.abs().mean(-1) if kind == "mad" else dev.square().mean(-1)


def dwm_masking(x: Tensor, grid: tuple[int, int], ratio: float,
                generator: torch.Generator | None = None, dispersion: str = "mad",
                topk: bool = False) -> Tensor:
    """Dispersion-weighted masking. x: (B, 1, F, T) -> ids_shuffle (B, L).

    The L - n_keep masked patches are drawn without replacement with probability proportional
    to w = d + 1e-12 (d: patch dispersion), so busy patches are hidden more often and silent
    input (d = 0 everywhere) falls back to uniform. `topk`: mask exactly the most dispersed
    patches (ties broken at random).
    """
    _check(x, grid, ratio)
    d = patch_dispersion(x, grid, dispersion)
    if topk:
        return _order(d, generator)
    # Gumbel-top-k: the m largest of log w + Gumbel noise are distributed as m draws without
    # replacement with probability proportional to w; sorting ascending puts them last (masked).
    u = _rand(d.shape, d.device, generator).clamp_(min=torch.finfo(torch.float32).tiny)
    return torch.argsort(torch.log(d + 1e-12) - torch.log(-torch.log(u)), dim=1)


def inverse_block_centres(grid: tuple[int, int], ratio: float, block: int = 5,
                          adjust: float = 0.07) -> int:
    """Block centres per sample: floor(L * (1 - ratio + adjust) / block area), at least 1.

    The block area is that of the block clamped to the grid (min(block, N_F) x min(block, N_T)),
    so on strip grids (1 x 76) the visible region comes as several short runs, not one.
    """
    n_f, n_t = grid
    area = min(block, n_f) * min(block, n_t)
    return max(1, int(n_f * n_t * (1 - ratio + adjust) / area))


def inverse_block_masking(x: Tensor, grid: tuple[int, int], ratio: float,
                          generator: torch.Generator | None = None, block: int = 5,
                          adjust: float = 0.07) -> Tensor:
    """Inverse block masking (data2vec 2.0): the VISIBLE patches are blocks. x: (B, 1, F, T) -> (B, L).

    Centres are drawn uniformly (with replacement) and each grows into a block x block square
    clipped at the grid edges (on a grid smaller than the block, the block is the whole grid
    along that axis). The count is then fixed to exactly n_keep without breaking contiguity:
    surplus block patches are dropped from the outside in (farthest from their centre first),
    missing ones are added by growing outward (nearest to a centre first), ties at random.
    data2vec drops and adds uniformly at random instead, which punches holes in the blocks.
    """
    _check(x, grid, ratio)
    n_c = inverse_block_centres(grid, ratio, block, adjust)
    centres = torch.randint(grid[0] * grid[1], (x.shape[0], n_c, 1), device=x.device, generator=generator)
    f, t = _coords(grid, x.device)
    df = f - torch.div(centres, grid[1], rounding_mode="floor")   # (B, C, L)
    dt = t - centres % grid[1]                                   # (B, C, L)
    half = block // 2
    inside = (df >= -half) & (df < block - half) & (dt >= -half) & (dt < block - half)
    d2 = (df.square() + dt.square()).float()
    big = float(grid[0] ** 2 + grid[1] ** 2 + 1)
    # Block patches rank by distance to the nearest centre whose block holds them; the others
    # come after all block patches, by distance to the nearest centre.
    in_block = torch.where(inside, d2, big).amin(1)            # (B, L)
    key = torch.where(in_block < big, in_block, big + d2.amin(1))
    return _order(key, generator)


@torch.no_grad()
def sgim_scores(features: Tensor) -> Tensor:
    """(B, L, D) patch features -> (B, L) score: best cosine similarity to the two group centres.

    Features are L2-normalised and split in two by the sign of their first principal component
    (relative to its mean); an empty group has a zero centre (similarity 0).
    """
    z = F.normalize(features.float(), dim=-1)
    zc = z - z.mean(1, keepdim=True)
    # The first principal component's scores are the top eigenvector of the (L, L) Gram matrix,
    # much cheaper than a (D, D) covariance for L << D.
    pc = torch.linalg.eigh(zc @ zc.transpose(1, 2))[1][..., -1]   # (B, L)
    group = pc > pc.mean(1, keepdim=True)
    centres = F.normalize(torch.stack([group, ~group], 1).float() @ z, dim=-1)   # (B, 2, D)
    return (z @ centres.transpose(1, 2)).amax(-1)


def sgim_masking(x: Tensor, grid: tuple[int, int], ratio: float,
                 generator: torch.Generator | None = None, encoder: nn.Module | None = None) -> Tensor:
    """Object-centric informed masking: mask the patches least like either object group.

    x: (B, 1, F, T) -> ids_shuffle (B, L). Runs `encoder` (an `Encoder`: x -> (B, [1+]L, D),
    CLS first) on the whole unmasked input without gradient, in the encoder's dtype and on its
    device; the L - n_keep lowest `sgim_scores` are masked (ties at random).
    """
    _check(x, grid, ratio)
    if encoder is None:
        raise ValueError("sgim masking needs the encoder (Masker(cfg, grid, encoder=model.encoder))")
    param = next(encoder.parameters())
    with torch.no_grad():
        tokens = encoder(x.to(device=param.device, dtype=param.dtype))
    score = sgim_scores(tokens[:, -grid[0] * grid[1]:]).to(x.device)   # drop the CLS token
    return _order(-score, generator)


def pattern_masking(x: Tensor, grid: tuple[int, int], ratio: float = 0.5,
                    generator: torch.Generator | None = None, pattern: str = "chessboard") -> Tensor:
    """Analysis patterns at ratio 0.5. x: (B, 1, F, T) -> ids_shuffle (B, L).

    'time-alternating': even time columns visible; 'frequency-alternating': even frequency rows
    visible; 'chessboard': patches with even f_row + t_col visible. When the pattern's visible
    count differs from n_keep(L, 0.5) (odd row/column counts), random patches of the pattern's
    visible (or masked) set change side so that every sample keeps exactly n_keep.
    """
    if ratio != 0.5:
        raise ValueError(f"pattern {pattern!r} is defined at mask ratio 0.5, got {ratio}")
    _check(x, grid, ratio)
    f, t = _coords(grid, x.device)
    visible = {"time-alternating": t % 2 == 0, "frequency-alternating": f % 2 == 0,
               "chessboard": (f + t) % 2 == 0}
    if pattern not in visible:
        raise ValueError(f"unknown pattern {pattern!r}: allowed {PATTERNS}")
    return _order((~visible[pattern]).float().expand(x.shape[0], -1), generator)


def structured_masking(x: Tensor, grid: tuple[int, int], ratio: float,
                       generator: torch.Generator | None = None, row_fraction: float = 0.5) -> Tensor:
    """Mask whole frequency rows and whole time columns. x: (B, 1, F, T) -> ids_shuffle (B, L).

    floor(row_fraction * N_mask / N_T) random frequency rows are masked whole, then random time
    columns until N_mask = L - n_keep patches are masked; the last column is masked only in part
    (random rows) when the count requires it. row_fraction = 0 is time-strip masking.
    """
    keep = _check(x, grid, ratio)
    n_f, n_t = grid
    n_rows = int(row_fraction * (n_f * n_t - keep) / n_t)
    B = x.shape[0]
    row_rank = torch.argsort(torch.argsort(_rand((B, n_f), x.device, generator), dim=1), dim=1)
    col_rank = torch.argsort(torch.argsort(_rand((B, n_t), x.device, generator), dim=1), dim=1)
    f, t = _coords(grid, x.device)
    # Columns are visible in rank order (low first); patches of masked rows come after all of them.
    key = torch.where(row_rank[:, f] < n_rows, n_t, col_rank[:, t]).float()
    return _order(key, generator)


def time_strip_masking(x: Tensor, grid: tuple[int, int], ratio: float,
                       generator: torch.Generator | None = None) -> Tensor:
    """Mask whole time columns (and one column in part when the count requires). (B, 1, F, T) -> (B, L)."""
    return structured_masking(x, grid, ratio, generator, row_fraction=0.0)


def hint_exchange(ids_shuffle: Tensor, keep: int, hint: float,
                  generator: torch.Generator | None = None) -> Tensor:
    """Reveal floor(N_mask * hint) random masked patches, then re-mask as many drawn uniformly
    from all visible ones (the revealed included). (B, L) -> (B, L), still n_keep visible.

    hint = 0 leaves the mask unchanged; hint = 1 gives exactly uniform random masking.
    """
    n_hint = int((ids_shuffle.shape[1] - keep) * hint)
    if n_hint == 0:
        return ids_shuffle
    masked = _shuffle(ids_shuffle[:, keep:], generator)
    pool = _shuffle(torch.cat([ids_shuffle[:, :keep], masked[:, :n_hint]], dim=1), generator)
    return torch.cat([pool, masked[:, n_hint:]], dim=1)


@dataclass
class MaskingConfig:
    """Masking strategy of a pre-training run; stored in the run config and every checkpoint."""
    strategy: str = "random"        # one of STRATEGIES
    ratio: float = 0.75             # 0.5 for the analysis patterns
    dispersion: str = "mad"         # dwm: 'mad' (mean absolute deviation) | 'var'
    topk: bool = False              # dwm: mask exactly the most dispersed patches
    hint_ratio: float | None = None  # dwm/inverse-block/sgim: fixed hint ratio; None = schedule
    hint_start_epoch: int = 50      # schedule: hint ratio 1 before this epoch (0-based) ...
    hint_exponent: float = 2.0      # ... then 1 - (epoch / total_epochs) ** hint_exponent
    block: int = 5                  # inverse-block: block side in patches
    block_adjust: float = 0.07      # inverse-block: extra share of centres (overlap)
    row_fraction: float = 0.5       # row-column: share of masked patches taken as whole rows

    def validate(self, grid: tuple[int, int] | None = None) -> "MaskingConfig":
        """Raise ConfigError naming the offending field, its value and what is allowed. With the
        patch `grid` (N_F, N_T), also that the ratio leaves visible and masked patches on it."""
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"masking.strategy: unknown masking strategy {self.strategy!r}, allowed {STRATEGIES}")
        if self.dispersion not in DISPERSIONS:
            raise ConfigError(f"masking.dispersion: unknown dwm dispersion {self.dispersion!r}, allowed {DISPERSIONS}")
        if self.strategy in PATTERNS and self.ratio != 0.5:
            raise ConfigError(f"masking.ratio: masking pattern {self.strategy!r} is defined at ratio 0.5 "
                              f"(got {self.ratio}): set the mask ratio to 0.5")
        if not 0.0 < self.ratio < 1.0:
            raise ConfigError(f"masking.ratio: mask ratio {self.ratio} must be in (0, 1)")
        if grid is not None:
            if len(grid) != 2 or min(grid) < 1:
                raise ConfigError(f"patch grid {grid}: expected (N_F, N_T) with both at least 1")
            try:
                n_keep(grid[0] * grid[1], self.ratio)
            except ConfigError as e:
                raise ConfigError(f"masking.ratio: {e}") from e
        if self.hint_ratio is not None and not 0.0 <= self.hint_ratio <= 1.0:
            raise ConfigError(f"masking.hint_ratio: {self.hint_ratio} must be in [0, 1], or null for the schedule")
        if self.hint_start_epoch < 0 or self.hint_exponent <= 0:
            raise ConfigError(f"masking.hint_start_epoch, hint_exponent: start epoch {self.hint_start_epoch} must "
                              f"be >= 0 and exponent {self.hint_exponent} > 0")
        if self.block < 1 or self.block_adjust < 0:
            raise ConfigError(f"masking.block, block_adjust: inverse-block: block {self.block} must be >= 1 and "
                              f"block_adjust {self.block_adjust} >= 0")
        if not 0.0 <= self.row_fraction <= 1.0:
            raise ConfigError(f"masking.row_fraction: {self.row_fraction} must be in [0, 1]")
        return self

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MaskingConfig":
        return from_dict(cls, d, "masking")


def hint_ratio(cfg: MaskingConfig, epoch: int, total_epochs: int) -> float:
    """Hint ratio in force at `epoch` (0-based) of `total_epochs`.

    dwm / inverse-block / sgim: the fixed cfg.hint_ratio, else 1 before cfg.hint_start_epoch and
    1 - (epoch / total_epochs) ** cfg.hint_exponent from then on. 'random' is the hint-1 case
    (1.0); the patterns and row/column strategies take no hints (0.0).
    """
    if cfg.strategy == "random":
        return 1.0
    if cfg.strategy not in HINTED:
        return 0.0
    if cfg.hint_ratio is not None:
        return float(cfg.hint_ratio)
    if epoch < cfg.hint_start_epoch:
        return 1.0
    return min(1.0, max(0.0, 1.0 - (epoch / max(total_epochs, 1)) ** cfg.hint_exponent))


class Masker:
    """Callable that produces ids_shuffle (B, L) for a batch under a MaskingConfig.

    `encoder` (the model's `Encoder`, shared, not copied) is needed only for 'sgim'.
    `n_keep` is the visible count of every sample.
    """

    def __init__(self, cfg: MaskingConfig, grid: tuple[int, int], encoder: nn.Module | None = None):
        self.cfg = cfg.validate(grid)
        self.grid = tuple(grid)
        self.n_keep = n_keep(grid[0] * grid[1], cfg.ratio)
        if cfg.strategy == "sgim" and encoder is None:
            raise ValueError("masking strategy 'sgim' needs the encoder: Masker(cfg, grid, encoder=...)")
        self.fn = {
            "random": random_masking,
            "dwm": partial(dwm_masking, dispersion=cfg.dispersion, topk=cfg.topk),
            "inverse-block": partial(inverse_block_masking, block=cfg.block, adjust=cfg.block_adjust),
            "sgim": partial(sgim_masking, encoder=encoder),
            **{p: partial(pattern_masking, pattern=p) for p in PATTERNS},
            "time-strip": time_strip_masking,
            "row-column": partial(structured_masking, row_fraction=cfg.row_fraction),
        }[cfg.strategy]

    def hint_ratio(self, epoch: int, total_epochs: int) -> float:
        return hint_ratio(self.cfg, epoch, total_epochs)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None, epoch: int = 0,
                 total_epochs: int = 1) -> Tensor:
        """x: (B, 1, F, T) normalised log-mel -> ids_shuffle (B, L) int64, first n_keep visible."""
        ids = self.fn(x, self.grid, self.cfg.ratio, generator)
        if self.cfg.strategy in HINTED:
            ids = hint_exchange(ids, self.n_keep, self.hint_ratio(epoch, total_epochs), generator)
        return ids
