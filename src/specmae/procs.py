"""Worker processes that end with the process that started them, whatever ends it (kill -9 too).

    worker_pool(workers, initializer, initargs)   a ProcessPoolExecutor whose workers do so
    loader_workers(workers)                       DataLoader arguments for workers that do so
    die_with_parent(parent)                       called first in a worker: end it when `parent` ends

A pool's workers wait on queues whose other ends their siblings also hold, so a parent killed
without its clean-up leaves them waiting forever, owned by init. Linux ends them at once
(prctl PR_SET_PDEATHSIG: SIGKILL when the parent dies); on other POSIX systems a thread in
each worker checks every POLL_SECONDS whether it still has the same parent (an orphan is given
another). A DataLoader worker has torch's watchdog, but that watches whichever parent the worker
has when it starts: after a kill during a worker's start-up, that is init, and the worker stays.

The kernel signals when the *thread* that forked the worker ends, not the whole process: create
a pool, and submit its first task (iterate a DataLoader), from the thread that keeps it.
"""

from __future__ import annotations

import ctypes
import functools
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Callable

POLL_SECONDS = 1.0
_PR_SET_PDEATHSIG = 1
# Workers must be children of the calling process, which is what die_with_parent checks against:
# forkserver (Python 3.14's default on Linux) would make them the server's.
_START = "fork" if sys.platform.startswith("linux") else "spawn"


def worker_pool(workers: int, initializer: Callable | None = None, initargs: tuple = ()) -> ProcessPoolExecutor:
    """A process pool of `workers` processes that end when this process ends; each runs
    `initializer(*initargs)` after arranging that."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(_START),
                               initializer=_start_worker, initargs=(os.getpid(), initializer, initargs))


def loader_workers(workers: int) -> dict:
    """torch.utils.data.DataLoader's arguments for `workers` worker processes (0: none, batches
    are loaded in this process) that end when this process ends."""
    if workers <= 0:
        return dict(num_workers=0)
    return dict(num_workers=workers, multiprocessing_context=multiprocessing.get_context(_START),
                worker_init_fn=functools.partial(_start_loader_worker, os.getpid()))


def _start_loader_worker(parent: int, worker_id: int) -> None:
    die_with_parent(parent)


def _start_worker(parent: int, initializer: Callable | None, initargs: tuple) -> None:
    die_with_parent(parent)
    if initializer is not None:
        initializer(*initargs)


def die_with_parent(parent: int) -> None:
    """End this process (at once, as kill -9 would) when process `parent`, its parent, ends."""
    if not _parent_death_signal(signal.SIGKILL):
        threading.Thread(target=_watch_parent, args=(parent,), name="die-with-parent", daemon=True).start()
    # The parent may have died before the line above: this process then already has another parent.
    if os.getppid() != parent:
        os._exit(1)


def _parent_death_signal(sig: int) -> bool:
    """Ask Linux to send `sig` to this process when its parent ends; False where it cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        # The interpreter's own symbols include libc's.
        return ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_SECONDS)
    os._exit(1)
