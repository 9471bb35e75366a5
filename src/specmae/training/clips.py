"""Labelled clips for fine-tuning: the epoch's order, random crops, micro-batches (docs/finetuning.md).

    task clips (waveforms) --order of the epoch: a permutation, or class-balanced draws-->
      --random crop of at most S_w samples, zero-padded to S_w--> micro-batch
      (waves (B, S_w) float32, lengths (B,) int64, targets (B, C) float32)

S_w is the fewest samples whose log-mel has the classifier's width T (`crop_samples`). The order
and crop positions depend only on (seed, epoch), and ranks take their slice of one global order,
so a resumed run continues with the same data. The class-balanced order (multi-label tasks by
default) draws clips with replacement, clip i with probability proportional to
sum over its labels c of 1000 / (count_c + 100), counts taken on the training part.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from ..audio import FrontendConfig


def crop_samples(frontend: FrontendConfig, n_frames: int) -> int:
    """Fewest samples whose log-mel has n_frames frames, for either front-end: (T - 1) * hop + 1."""
    return (n_frames - 1) * frontend.hop_length + 1


def balanced_weights(targets: np.ndarray) -> np.ndarray:
    """(N,) sampling weights of clips with targets (N,) class indices or (N, C) 0/1:
    sum over the clip's labels of 1000 / (count + 100), counts over these N clips."""
    y = np.asarray(targets)
    if y.ndim == 1:
        y = np.eye(int(y.max()) + 1, dtype=np.float64)[y]
    per_class = 1000.0 / (y.sum(0) + 100.0)                                       # (C,)
    return (y * per_class).sum(1)


def one_hot_targets(targets: np.ndarray, n_classes: int) -> np.ndarray:
    """(N,) class indices or (N, C) 0/1 -> (N, C) float32."""
    y = np.asarray(targets)
    if y.ndim == 2:
        return y.astype(np.float32)
    out = np.zeros((len(y), n_classes), np.float32)
    out[np.arange(len(y)), y] = 1.0
    return out


class ClipBatches(torch.utils.data.Dataset):
    """One epoch's micro-batches for one rank: item k = (waves (B, S_w), lengths (B,), targets (B, C)).

    clips(indices) -> the waveforms of those task clips (any length, at the model's rate).
    weights: per-clip sampling weights for class-balanced draws, or None for a permutation.
    """

    def __init__(self, clips: Callable[[Sequence[int]], list[np.ndarray]], index: np.ndarray, targets: np.ndarray,
                 crop: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1,
                 weights: np.ndarray | None = None):
        rng = np.random.default_rng([seed, epoch, 7])
        if weights is None:
            order = rng.permutation(len(index))
        else:
            order = rng.choice(len(index), size=len(index), replace=True, p=weights / weights.sum())
        offsets = rng.random(len(order))  # a share of each clip's room for the crop
        per_rank = len(order) // world
        if per_rank < batch_size:
            raise ValueError(f"{len(index)} training clips are too few for {world} x {batch_size} per step")
        mine = slice(rank * per_rank, (rank + 1) * per_rank)
        self.order, self.offsets = index[order][mine], offsets[mine]
        self.targets = targets[order][mine]
        self.clips, self.crop, self.batch_size = clips, crop, batch_size

    def __len__(self) -> int:
        return len(self.order) // self.batch_size

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sl = slice(k * self.batch_size, (k + 1) * self.batch_size)
        waves = np.zeros((self.batch_size, self.crop), np.float32)
        lengths = np.zeros(self.batch_size, np.int64)
        for j, (wave, u) in enumerate(zip(self.clips(self.order[sl]), self.offsets[sl])):
            start = int(u * (max(len(wave) - self.crop, 0) + 1))
            piece = wave[start:start + self.crop]
            waves[j, :len(piece)] = piece
            lengths[j] = len(piece)
        return torch.from_numpy(waves), torch.from_numpy(lengths), torch.from_numpy(self.targets[sl])
