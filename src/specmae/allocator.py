"""Keep freed host memory in the process instead of handing it back to the kernel.

glibc's malloc serves blocks of more than a few MB with fresh `mmap` pages and returns them on
`free`; a training step allocates and frees hundreds of such blocks (weight casts, gradients,
activations), so every step pays page faults and kernel zeroing on all of them. On the 2-core
CPU machine that was over 40 % of a bf16 ViT-B step (benchmarks/README.md). Raising the mmap and
trim thresholds makes freed blocks stay in the heap for the next step. Peak memory is unchanged;
the process just does not shrink back after its peak, which a training or embedding job would
reach again in its next batch anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_THRESHOLD = 1 << 30


@functools.cache
def retain_freed_memory() -> bool:
    """Apply the thresholds once per process; False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    applied = bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _THRESHOLD))
    log.debug("malloc thresholds %s", "raised" if applied else "left as they were")
    return applied
