"""Fine-tuning augmentations: random gain, mixup, SpecAugment (docs/finetuning.md).

    waves (B, S) --random_gain--> --mixup (waveform)--> front-end, normalise --> x (B, 1, F, T)
      --mixup (spectrogram)--> --spec_augment--> the classifier (Patchout is the classifier's)

Pure functions of their inputs and an explicit `torch.Generator`, vectorised over the batch; the
recipe seeds the generator from (seed, rank, step, micro-step), so a resumed run draws the same
augmentations. They are called by the training loss only: validation, test and prediction see
the clips as they are.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

def random_gain(waves: Tensor, gain_db: float, generator: torch.Generator) -> Tensor:
    """waves (B, S) -> each clip scaled by a gain drawn uniformly in +-gain_db dB."""
    if gain_db == 0:
        return waves
    db = (torch.rand(waves.shape[0], 1, generator=generator, device=waves.device) * 2 - 1) * gain_db
    return waves * 10 ** (db / 20)


def mixup_lambda(batch: int, alpha: float, generator: torch.Generator) -> Tensor:
    """(B,) weights of each sample's own clip: lambda ~ Beta(alpha, alpha), lambda = max(lambda, 1 - lambda).

    torch's Beta sampler takes no generator, so the draws come from numpy, seeded by `generator`.
    """
    seed = int(torch.randint(2 ** 62, (1,), generator=generator, device=generator.device))
    lam = np.random.default_rng(seed).beta(alpha, alpha, batch)
    return torch.from_numpy(np.maximum(lam, 1 - lam)).float()


def mixup(x: Tensor, targets: Tensor, alpha: float, generator: torch.Generator,
          remove_mean: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Mix each sample with a random other one of the batch.

    x: (B, ...) waveforms (B, S) or spectrograms (B, 1, F, T); targets (B, C) one-hot or multi-hot.
    remove_mean: centre each waveform first, so that a DC offset does not dominate the mix.
    -> (lam * x + (1 - lam) * x[perm], the same mix of the targets, perm (B,))
    """
    B = x.shape[0]
    perm = torch.randperm(B, generator=generator, device=generator.device).to(x.device)
    lam = mixup_lambda(B, alpha, generator).to(x.device)
    if remove_mean:
        x = x - x.mean(dim=-1, keepdim=True)
    shape = (B,) + (1,) * (x.ndim - 1)
    mixed = lam.view(shape) * x + (1 - lam.view(shape)) * x[perm]
    lam_t = lam.view(B, 1).to(targets.dtype)
    return mixed, lam_t * targets + (1 - lam_t) * targets[perm], perm


def _band_mask(batch: int, size: int, widest: int, generator: torch.Generator, device) -> Tensor:
    """(B, size) bool: per sample one band of width uniform in [0, widest), at a uniform position."""
    u = torch.rand(batch, 2, generator=generator, device=generator.device).to(device)
    width = (u[:, :1] * widest).long()                                             # (B, 1)
    start = (u[:, 1:] * (size - width + 1)).long().clamp(max=size - 1)             # (B, 1)
    pos = torch.arange(size, device=device)
    return (pos >= start) & (pos < start + width)


def spec_augment(x: Tensor, freq_mask: float, time_mask: float, generator: torch.Generator) -> Tensor:
    """SpecAugment on normalised log-mel x (B, 1, F, T): per sample one frequency band of up to
    freq_mask * F bins and one time band of up to time_mask * T frames set to 0 (the corpus mean,
    which is also what padding holds)."""
    B, _, Fr, T = x.shape
    keep = torch.ones(B, Fr, T, dtype=torch.bool, device=x.device)
    if freq_mask > 0:
        keep &= ~_band_mask(B, Fr, round(freq_mask * Fr), generator, x.device)[:, :, None]
    if time_mask > 0:
        keep &= ~_band_mask(B, T, round(time_mask * T), generator, x.device)[:, None, :]
    return x * keep[:, None]
