"""The tensors behind the figures: masks, reconstructions, mask-ratio sweeps, attention maps.

No plotting here (figures.py draws these). Every function takes a normalised batch
x: (B, 1, F, T) (F mel bins drawn bottom to top, T frames) and, where it draws masks, an explicit
torch.Generator: the same seed gives the same masks, reconstructions and figures.

Masks are ids_shuffle (B, L) as everywhere in specmae (masking.py): a permutation of the patch
indices (row-major over (frequency row, time column)) whose first n_keep entries are visible.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch
from torch import Tensor

from ..masking import PATTERNS, MaskingConfig, Masker, pattern_masking, random_masking
from ..model.mae import MaskedAutoencoder, hidden_mask
from ..model.vit import Encoder

# Masking strategies drawn for every checkpoint whose grid and ratio allow them.
STRATEGIES = ("random", "dwm", "inverse-block", "sgim")
# The patterned masks of the MSM-MAE paper at ratio 0.5, by what they look like on the page.
PATTERN_NAMES = {"time-alternating": "vertical stripes", "frequency-alternating": "horizontal stripes",
                 "chessboard": "chessboard"}
SWEEP_RATIOS = (0.40, 0.50, 0.60, 0.70, 0.75, 0.80, 0.85, 0.90, 0.95, 0.99)
SWEEP_VISIBLE = (10, 5, 2, 1)


@dataclass
class Reconstruction:
    """One masked reconstruction of a batch, all tensors on the CPU in float32."""
    input: Tensor      # (B, 1, F, T) normalised log-mel
    output: Tensor     # (B, 1, F, T) prediction with the visible patches pasted back
    mask: Tensor       # (B, L), 1 = masked (hidden from the encoder)
    mse: Tensor        # (B,) mean squared error over the masked patches, normalised units

    @property
    def error(self) -> Tensor:
        """(B, 1, F, T) per-pixel absolute error (zero on visible patches)."""
        return (self.output - self.input).abs()

    @property
    def visible(self) -> int:
        return int((self.mask[0] == 0).sum())


@torch.no_grad()
def reconstruct_ids(model: MaskedAutoencoder, x: Tensor, ids_shuffle: Tensor, keep: int) -> Reconstruction:
    """Reconstruct x (B, 1, F, T) from the first `keep` patches of ids_shuffle (B, L)."""
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    pred = model.forward_decoder(model.forward_encoder(x, ids_shuffle, keep), ids_restore)
    return paste(model, x, pred, hidden_mask(ids_restore, keep))


def paste(model: MaskedAutoencoder, x: Tensor, pred: Tensor, mask: Tensor) -> Reconstruction:
    """The model's predictions pred (B, L, pf*pt) on the hidden patches (mask (B, L), 1 = hidden)
    with the visible patches of x (B, 1, F, T) pasted back unchanged, so that the output equals
    the input there exactly.

    A model trained on per-patch normalised targets (norm_pix_loss) predicts each patch's shape,
    not its level: its predictions are drawn with the true patch's mean and std put back, as the
    MAE authors draw theirs, so that the figure compares like with like.
    """
    patches = model.patchify(x).float()                                   # (B, L, pf*pt)
    pred = pred.float()
    if model.cfg.decoder.norm_pix_loss:
        pred = pred * (patches.var(dim=-1, keepdim=True) + 1e-6) ** 0.5 + patches.mean(dim=-1, keepdim=True)
    pasted = torch.where(mask[..., None].bool(), pred, patches)
    mse = ((pred - patches) ** 2).mean(-1).mul(mask).sum(1) / mask.sum(1)
    return Reconstruction(x.float().cpu(), model.unpatchify(pasted).cpu(), mask.float().cpu(), mse.cpu())


@torch.no_grad()
def reconstruct(model: MaskedAutoencoder, x: Tensor, mask_ratio: float,
                ids_shuffle: Tensor | None = None, generator: torch.Generator | None = None):
    """x: (B, 1, F, T) normalised -> (reconstruction with visible patches pasted back, mask (B, L), loss).

    One forward of the model, with its masks (random from `generator` unless ids_shuffle is
    given); loss is its training loss on this batch.
    """
    loss, pred, mask = model(x, mask_ratio, ids_shuffle=ids_shuffle, generator=generator)
    out = paste(model, x, pred, mask)
    return out.output, out.mask, loss.item()


def strategies(masking: MaskingConfig, grid: tuple[int, int]) -> list[str]:
    """The strategies of STRATEGIES (and the checkpoint's own, if another) that its masking
    configuration allows on `grid`, at its own ratio."""
    names = list(STRATEGIES) + ([masking.strategy] if masking.strategy not in STRATEGIES + PATTERNS else [])
    allowed = []
    for name in names:
        try:
            replace(masking, strategy=name).validate(grid)
        except ValueError:
            continue
        allowed.append(name)
    return allowed


def strategy_ids(x: Tensor, encoder: Encoder, masking: MaskingConfig, strategy: str,
                 generator: torch.Generator) -> Tensor:
    """ids_shuffle (B, L) of `strategy` at the checkpoint's ratio and settings, without hints.

    The pre-training schedule exchanges a share of the informed strategies' masked patches for
    random ones (the hint ratio); the figures show the strategy itself (hint ratio 0).
    """
    cfg = replace(masking, strategy=strategy, hint_ratio=0.0)
    return Masker(cfg, encoder.cfg.grid, encoder=encoder)(x, generator)


def pattern_ids(x: Tensor, grid: tuple[int, int], pattern: str, generator: torch.Generator) -> Tensor:
    """ids_shuffle (B, L) of an analysis pattern at ratio 0.5 (masking.pattern_masking)."""
    return pattern_masking(x, grid, 0.5, generator, pattern=pattern)


def sweep_steps(num_patches: int, ratios: Sequence[float] = SWEEP_RATIOS,
                visible: Sequence[int] = SWEEP_VISIBLE) -> list[tuple[float, int]]:
    """[(mask ratio, visible patches)] of the sweep, fewest masked first.

    `ratios`, plus the ratio leaving exactly k visible for k in `visible` (the midpoint
    1 - (k + 0.5) / L, so that floor(L * (1 - ratio)) = k without rounding doubt). Ratios that
    leave no patch visible (0.99 of fewer than 100 patches) or none masked are dropped, and a
    visible count reached twice is kept once, at its round ratio.
    """
    steps: dict[int, float] = {}
    for ratio in ratios:
        keep = int(num_patches * (1 - ratio))
        if 1 <= keep < num_patches:
            steps.setdefault(keep, ratio)
    for keep in visible:
        if 1 <= keep < num_patches:
            steps.setdefault(keep, 1 - (keep + 0.5) / num_patches)
    return sorted(((ratio, keep) for keep, ratio in steps.items()), key=lambda s: -s[1])


def sweep(model: MaskedAutoencoder, x: Tensor, generator: torch.Generator,
          steps: list[tuple[float, int]] | None = None) -> list[tuple[float, Reconstruction]]:
    """Reconstructions of x (B, 1, F, T) at every sweep step -> [(ratio, Reconstruction)].

    One random order serves every step, so the visible patches of a higher ratio are a subset
    of those of a lower one and the panels differ only by what was taken away.
    """
    grid = model.cfg.encoder.grid
    ids = random_masking(x, grid, 0.5, generator)
    steps = steps if steps is not None else sweep_steps(grid[0] * grid[1])
    return [(ratio, reconstruct_ids(model, x, ids, keep)) for ratio, keep in steps]


def parse_ref(text: str) -> str | tuple[int, int]:
    """A reference patch as the user writes it: 'cls', 'loudest', or 't,f' (time column,
    frequency row, 0-based) -> 'cls' | 'loudest' | (t, f). ValueError naming the text otherwise."""
    word = text.strip().lower()
    if word in ("cls", "loudest"):
        return word
    try:
        t, f = (int(v) for v in word.split(","))
    except ValueError:
        raise ValueError(f"--ref {text!r}: expected 'cls', 'loudest' or 't,f' (time column, "
                         "frequency row of a patch, from 0)") from None
    return t, f


def check_ref(ref: str | tuple[int, int], encoder: Encoder) -> None:
    """ValueError naming the reference when it is not in this encoder's grid (or it has no [CLS])."""
    n_f, n_t = encoder.cfg.grid
    if ref == "cls" and encoder.num_prefix == 0:
        raise ValueError("--ref cls: this checkpoint's encoder has no [CLS] token; give a patch as 't,f'")
    if isinstance(ref, tuple):
        t, f = ref
        if not (0 <= t < n_t and 0 <= f < n_f):
            raise ValueError(f"--ref {t},{f}: outside the patch grid of {n_t} time columns (t = 0..{n_t - 1}) "
                             f"x {n_f} frequency rows (f = 0..{n_f - 1})")


def loudest_patch(x: Tensor, grid: tuple[int, int]) -> tuple[int, int]:
    """(t, f) of the patch of x (1, 1, F, T) (un-normalised log-mel) with the highest mean."""
    n_f, n_t = grid
    means = torch.nn.functional.avg_pool2d(x[:1].float(), (x.shape[2] // n_f, x.shape[3] // n_t))[0, 0]
    f, t = divmod(int(means.argmax()), n_t)
    return t, f


@torch.no_grad()
def attention(encoder: Encoder, x: Tensor) -> Tensor:
    """Last-layer self-attention of x (B, 1, F, T) on all patches, averaged over heads: (B, N, N)
    float32 with N = [1+]L tokens ([CLS] first); each row sums to 1."""
    return encoder.attention_maps(x).mean(dim=1).cpu()


def attention_from(attn: Tensor, ref: str | tuple[int, int], grid: tuple[int, int], prefix: int) -> Tensor:
    """Row of one head-averaged map attn (N, N) -> (N_F, N_T), the share of the reference token's
    attention on each patch (the share on [CLS] is left out, so the map sums to 1 minus it)."""
    n_f, n_t = grid
    row = 0 if ref == "cls" else prefix + ref[1] * n_t + ref[0]
    return attn[row, prefix:].reshape(n_f, n_t)
