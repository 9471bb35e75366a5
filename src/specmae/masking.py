"""Masking strategies for masked spectrogram modelling (design.md section 4).

A strategy maps a batch to, per sample, a permutation of patch indices whose first
`n_keep(L, ratio)` entries are the visible patches. Every sample keeps exactly the same
count, so the encoder input stays a dense (B, n_keep, D) tensor.
"""

from __future__ import annotations

import torch
from torch import Tensor


def n_keep(num_patches: int, ratio: float) -> int:
    """Visible patches per sample: floor(L * (1 - ratio)), as the official code."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio {ratio} must be in (0, 1)")
    keep = int(num_patches * (1 - ratio))
    if keep < 1 or keep >= num_patches:
        raise ValueError(
            f"mask ratio {ratio} leaves {keep} of {num_patches} patches visible; "
            f"it must leave at least one visible and one masked patch")
    return keep


def ids_from_noise(noise: Tensor) -> Tensor:
    """(B, L) scores -> (B, L) permutation, lowest score first (first n_keep visible)."""
    return torch.argsort(noise, dim=1)


def random_masking(x: Tensor, grid: tuple[int, int], ratio: float,
                   generator: torch.Generator | None = None) -> Tensor:
    """MAE's uniform random subset. x: (B, 1, F, T); returns ids_shuffle (B, N_F*N_T)."""
    n_keep(grid[0] * grid[1], ratio)
    noise = torch.rand(x.shape[0], grid[0] * grid[1], device=x.device, generator=generator)
    return ids_from_noise(noise)
