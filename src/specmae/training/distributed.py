"""Processes of a distributed run: torchrun's environment, the timeout, and a lost peer.

    init_distributed(timeout)   rank, world size and device from torchrun's environment; the
                                process group (NCCL on GPUs, gloo on CPUs) on one node or many
    Dist.collective(what)       code that waits for the others (a collective, the rendezvous,
                                DDP's forward and backward); whatever fails inside it is
                                PeerLost: one line naming what failed, the rank, the timeout
                                and --resume
    check_same_step(...)        every process starts at the same step (one shared run folder)

What launching on several nodes looks like, and what happens when one dies: docs/distributed.md.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from ..checkpoint import CheckpointError


class PeerLost(RuntimeError):
    """A collective or the rendezvous failed: another process of the run is gone, or did not
    answer within the timeout. The run continues from its last checkpoint with `--resume`."""


@dataclass
class Dist:
    """This process's place in the run: its rank among `world` processes, its device, the timeout."""
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    timeout: float | None = None  # seconds a collective waits for the others; None: torch's default

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self, what: str = "a barrier") -> None:
        if self.world > 1:
            with self.collective(what):
                dist.barrier()

    @contextlib.contextmanager
    def collective(self, what: str):
        """Run `what`, code that waits for the other processes (a rendezvous, a barrier, an
        all-reduce, DDP's forward and backward); what fails inside it is raised as PeerLost.

        The place, not the wording, tells a lost peer: torch raises what gloo, NCCL or the
        rendezvous store report as RuntimeError, DistError (a RuntimeError), TimeoutError or
        ConnectionError (OSErrors), with whatever message the library chose ("Connection reset
        by peer", "Application timeout caused pair closure", "Timed out after 31 seconds waiting
        for clients"). Running out of memory and torch.compile's failures are not a lost peer;
        errors of other types (a ValueError, say) go through unchanged, and in one process all do.
        A model's own RuntimeError in DDP's forward or backward does become PeerLost, its message
        kept in the line (`--debug` shows the traceback): DDP communicates inside both.
        """
        try:
            yield
        except (RuntimeError, OSError) as e:
            compiler = type(e).__module__.startswith(("torch._dynamo", "torch._inductor"))  # torch.compile's
            if self.world == 1 or compiler or isinstance(e, (PeerLost, torch.OutOfMemoryError)):
                raise
            waits = f"{self.timeout:g} s" if self.timeout is not None else "torch's default"
            raise PeerLost(f"rank {self.rank} of {self.world}: {what} failed ({_first_sentence(e)}): another "
                           f"process or node stopped, or did not answer within train.dist_timeout ({waits}); "
                           "restart every node with --resume to continue from the last checkpoint") from e


def _first_sentence(e: BaseException) -> str:
    """The library's message without its source location ("[.../pair.cc:553] ") and advice."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", " ".join(str(e).split()))
    return (text.split(". ")[0].rstrip(".") or type(e).__name__)[:200]


def init_distributed(timeout: float | None = None) -> Dist:
    """Read torchrun's environment; one process per GPU, or CPU processes over gloo.

    `timeout` (seconds, default torch's: 10 minutes for NCCL, 30 for gloo) bounds how long the
    rendezvous and each collective wait for the other processes (train.dist_timeout)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"process {local} on this node but only {torch.cuda.device_count()} GPU(s) visible: "
                               "start one process per GPU, or set CUDA_VISIBLE_DEVICES= to train on the CPU")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    env = Dist(rank, world, device, timeout)
    if world > 1 and not dist.is_initialized():
        with env.collective("the rendezvous (init_process_group)"):
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                    timeout=None if timeout is None else timedelta(seconds=timeout))
    return env


def check_same_step(env: Dist, step: int, checkpoints: Path) -> None:
    """Every process must start at the same step: a node that reads another run folder (an --out
    on a node's own disk) would resume elsewhere, or not at all, and run a different schedule."""
    bounds = torch.tensor([step, -step], device=env.device)
    with env.collective("the all-reduce of the processes' start steps"):
        dist.all_reduce(bounds, op=dist.ReduceOp.MAX)
    first, last = -int(bounds[1]), int(bounds[0])
    if first != last:
        raise CheckpointError(f"rank {env.rank} starts at step {step} from {checkpoints}, other processes at steps "
                              f"{first} to {last}: every node must see the same run folder; put --out on storage "
                              "that all nodes share (or copy its checkpoints to each node)")
