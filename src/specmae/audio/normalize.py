"""Normalisation of log-mel by corpus statistics: one global mean/std, or one per mel bin.

    lms (..., F, T)  ->  (lms - mean) / std      mean, std: scalars ('global', MSM-MAE)
                                                  or (F,) vectors ('per-bin', MaskSpec)

The statistics are measured once on random crops of the pre-training corpus
(`training.corpus.Corpus.stats`) and stored in every checkpoint as `norm_stats`: `[mean, std]`
for global statistics (the format of every checkpoint written before per-bin statistics
existed), `[[mean_1, ..., mean_F], [std_1, ..., std_F]]` for per-bin ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..schema import ConfigError


@dataclass(frozen=True)
class NormStats:
    mean: tuple[float, ...]   # 1 value (global) or F values (per mel bin)
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise ConfigError(f"norm_stats: {len(self.mean)} means but {len(self.std)} stds")
        if not all(math.isfinite(v) for v in self.mean + self.std) or min(self.std) <= 0:
            raise ConfigError(f"norm_stats: expected finite means and positive stds, got mean {self._short(self.mean)}, "
                              f"std {self._short(self.std)}")

    @staticmethod
    def _short(values: tuple[float, ...]) -> str:
        return f"{values[0]:g}" if len(values) == 1 else f"[{values[0]:g}, ... ({len(values)} values)]"

    @classmethod
    def parse(cls, value: Any, where: str = "norm_stats") -> "NormStats":
        """[mean, std] or [[means], [stds]] (as stored in checkpoints), or a NormStats."""
        if isinstance(value, NormStats):
            return value
        try:
            mean, std = value
            mean = tuple(float(v) for v in (mean if isinstance(mean, (list, tuple)) else [mean]))
            std = tuple(float(v) for v in (std if isinstance(std, (list, tuple)) else [std]))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: expected [mean, std] or [[means], [stds]], got {value!r:.80}") from e
        return cls(mean, std)

    @property
    def per_bin(self) -> bool:
        return len(self.mean) > 1

    def to_json(self) -> list:
        return [self.mean[0], self.std[0]] if not self.per_bin else [list(self.mean), list(self.std)]

    def check_bins(self, n_mels: int, where: str = "norm_stats") -> "NormStats":
        if self.per_bin and len(self.mean) != n_mels:
            raise ConfigError(f"{where}: {len(self.mean)} per-bin statistics for a {n_mels}-bin front-end")
        return self

    def tensors(self, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        """(mean, std) float32, shaped (F, 1) per bin or () global: they broadcast over (..., F, T)."""
        shape = (-1, 1) if self.per_bin else ()
        return (torch.tensor(self.mean, dtype=torch.float32, device=device).reshape(shape),
                torch.tensor(self.std, dtype=torch.float32, device=device).reshape(shape))

    def apply(self, lms: Tensor, inplace: bool = False) -> Tensor:
        """lms (..., F, T) -> normalised; `inplace` overwrites lms."""
        if not self.per_bin:
            mean, std = self.mean[0], self.std[0]
        else:
            mean, std = self.tensors(lms.device)
        return lms.sub_(mean).div_(std) if inplace else (lms - mean) / std
