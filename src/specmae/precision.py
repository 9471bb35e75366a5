"""Which precision is fast here: bf16 matrix products only pay where the hardware does them
faster than fp32, which the instruction set alone does not tell on a CPU."""

from __future__ import annotations

import functools
import time

import torch
from torch import Tensor

__all__ = ["cpu_bf16_speedup", "native_bf16"]


def native_bf16(device: str | torch.device) -> bool:
    """Whether bf16 matrix products are clearly faster than fp32 on `device`: a GPU with bf16
    support, or a CPU with bf16 instructions (AVX512-BF16 or AMX) whose bf16 products measure at
    least 1.3x the speed of fp32 ones. The instructions alone do not say it: an AMD EPYC with
    AVX512-BF16 multiplies bf16 at 4x its fp32 rate, an Intel Xeon with AVX512-BF16 and no AMX
    at about 0.5x (benchmarks/README.md). Without the instructions bf16 is emulated and slower."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private: absent means no
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks) and cpu_bf16_speedup() >= 1.3


@functools.cache
def cpu_bf16_speedup() -> float:
    """fp32 time / bf16 time of a (512 x 1024) @ (1024 x 1024) product on this CPU with the current
    thread count, best of 5 each: measured once per process (~0.1 s)."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(512, 1024, generator=gen), torch.randn(1024, 1024, generator=gen)

    def best(x: Tensor, y: Tensor) -> float:
        x @ y  # warm-up
        times = []
        for _ in range(5):
            start = time.perf_counter()
            x @ y
            times.append(time.perf_counter() - start)
        return min(times)

    return best(a, b) / best(a.bfloat16(), b.bfloat16())
