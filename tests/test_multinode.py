"""Two "nodes" of one process each on this machine, started as torchrun starts them on a cluster:
c10d rendezvous on 127.0.0.1, gloo over TCP. Both end with the same weights; a node that dies or
stops answering ends the other one within the timeout, with one line instead of a hang."""

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from specmae.training.pretrain import pretrain

from test_cli import TINY
from test_pretrain import assert_ranks_trained_alike, tiny_run
from test_procs import process_tree

HERE = Path(__file__).resolve().parent


def two_launchers(test):
    """A test that starts two torchrun launchers; a node's processes are found through /proc."""
    linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to kill a node")
    return pytest.mark.slow(linux(test))


def free_port() -> int:
    """A free port below the kernel's ephemeral range: ports the kernel picks itself (bind to port
    0, outgoing connections, gloo's) come from that range, so none can take it before torchrun
    binds it, as one released by a bind to port 0 could be."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(100):
        port = random.SystemRandom().randrange(max(1024, low - 8192), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise OSError(f"no free port among 100 tried below {low}")


@pytest.fixture
def busy_cpu(request):
    """With param "busy": two processes spinning beside the test, as on a shared CI machine."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(2 if request.param == "busy" else 0)]
    yield
    for proc in spinners:
        proc.kill()
        proc.wait()


def signal_node(proc: subprocess.Popen, sig: int) -> None:
    """Signal a launcher and every process below it: torchrun starts each worker in a session of
    its own, so signalling the launcher's process group would miss the worker."""
    for pid in process_tree(proc.pid):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


@contextmanager
def two_nodes(logs: Path, *command: str, node1: list[str] | None = None):
    """Start `torchrun --nnodes 2 --nproc_per_node 1 ... command` twice (node 1 runs `node1` if
    given); node 0 hosts the rendezvous store. Yields the two launchers; every process of both is
    killed on the way out."""
    port, nodes = free_port(), []
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    try:
        for node in (0, 1):
            nodes.append(subprocess.Popen(
                [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                 "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "multinode-test",
                 "--rdzv-conf", f"is_host={int(node == 0)},join_timeout=60", *(node1 if node and node1 else command)],
                env=env, stdout=open(logs / f"node{node}.out", "w"), stderr=open(logs / f"node{node}.err", "w")))
        yield nodes
    finally:
        for proc in nodes:
            signal_node(proc, signal.SIGKILL)
            proc.wait()


@two_launchers
def test_two_nodes_hold_identical_weights(tmp_path):
    run = tmp_path / "run"
    with two_nodes(tmp_path, str(HERE / "ddp_worker.py"), str(run)) as nodes:
        codes = [proc.wait(timeout=120) for proc in nodes]
    assert codes == [0, 0], (tmp_path / "node0.err").read_text()[-3000:] + (tmp_path / "node1.err").read_text()[-3000:]
    assert_ranks_trained_alike(run)


ONE_LINE = (r"specmae pretrain: rank [01] of 2: (?P<what>.+) failed \((?P<why>.+)\): another process or node "
            r"stopped, or did not answer within train.dist_timeout \({timeout} s\); restart every node with "
            r"--resume to continue from the last checkpoint")
FAILS_IN = ("DDP's forward and backward (gradient all-reduce)", "the all-reduce of the loss",
            "the barrier after a checkpoint")


@two_launchers
@pytest.mark.parametrize("busy_cpu", ["idle", "busy"], indirect=True)
@pytest.mark.parametrize("fault, timeout", [("kill", 60), ("stop", 8)])
def test_a_lost_node_ends_the_other_with_one_line(tmp_path, fault, timeout, busy_cpu):
    # kill -9: the peer's sockets close and the survivor fails at its next collective, long before
    # the timeout. SIGSTOP: a node that hangs without closing anything; only the timeout ends the
    # wait. What the line says of the failure is gloo's (and differs under load), not asserted.
    run = tmp_path / "run"
    command = ["-m", "specmae.cli", "pretrain", "--out", str(run), *TINY, "--no-report", "--epochs", "100",
               "--checkpoint-every", "2", "--set", "train.builtin_clips=48", "--set", f"train.dist_timeout={timeout}"]
    with two_nodes(tmp_path, *command) as (survivor, victim):
        started = time.monotonic()
        while not (run / "checkpoints" / "latest").is_file():  # training runs and can be resumed
            assert survivor.poll() is None and victim.poll() is None, (tmp_path / "node0.err").read_text()[-3000:]
            assert time.monotonic() - started < 240, "no checkpoint after 240 s"
            time.sleep(0.05)
        signal_node(victim, signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
        lost = time.monotonic()
        code = survivor.wait(timeout=timeout + 60)
        waited = time.monotonic() - lost
    err = (tmp_path / "node0.err").read_text()
    assert code != 0
    lines = [line for line in err.splitlines() if line.startswith("specmae pretrain:")]
    assert len(lines) == 1, err[-3000:]
    line = re.fullmatch(ONE_LINE.format(timeout=timeout), lines[0])
    assert line and line["what"] in FAILS_IN, lines[0]
    assert not any(line.startswith("[rank") for line in err.splitlines()), err[-3000:]  # no worker traceback
    if fault == "stop":
        assert waited >= timeout - 1, (waited, lines[0])
    else:
        assert waited < timeout, (waited, lines[0])  # a closed connection is seen at once, not after the timeout


@two_launchers
def test_nodes_resuming_from_different_run_folders_stop_at_once(tmp_path):
    # --out on each node's own disk: node 0 finds the interrupted run's checkpoint, node 1 only its config.
    pretrain(tiny_run(), tmp_path / "a", progress=False, max_steps=4)
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "config.json", tmp_path / "b")
    resume = ["-m", "specmae.cli", "pretrain", "--resume", "--quiet", "--no-report", "--out"]
    with two_nodes(tmp_path, *resume, str(tmp_path / "a"), node1=[*resume, str(tmp_path / "b")]) as nodes:
        codes = [proc.wait(timeout=60) for proc in nodes]
    assert 0 not in codes
    for node, step in ((0, 4), (1, 0)):
        err = (tmp_path / f"node{node}.err").read_text()
        assert re.search(rf"specmae pretrain: rank [01] starts at step {step} from .*, other processes at steps 0 "
                         r"to 4: every node must see the same run folder; put --out on storage that all nodes "
                         r"share", err), err[-3000:]


def test_whatever_fails_inside_a_collective_is_a_lost_peer_named_by_its_place():
    from specmae.training.distributed import Dist, PeerLost
    env = Dist(rank=1, world=4, timeout=30)
    for error, torch_says in (
            (RuntimeError("[/src/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
                          "[10.0.0.2]:4711. This is typically caused by a remote worker crashing. GLHF!"),
             "Connection closed by peer [10.0.0.2]:4711"),
            (RuntimeError("Application timeout caused pair closure"), "Application timeout caused pair closure"),
            (torch.distributed.DistStoreError("Timed out after 31 seconds waiting for clients. 3/4 clients joined."),
             "Timed out after 31 seconds waiting for clients"),
            (torch.distributed.DistBackendError("NCCL communicator was aborted on rank 1."),
             "NCCL communicator was aborted on rank 1"),
            (TimeoutError(), "TimeoutError"),
            (ConnectionResetError(104, "Connection reset by peer"), "Connection reset by peer")):
        with pytest.raises(PeerLost) as lost, env.collective("the all-reduce of the loss"):
            raise error
        assert str(lost.value) == (f"rank 1 of 4: the all-reduce of the loss failed ({torch_says}): another process "
                                   "or node stopped, or did not answer within train.dist_timeout (30 s); restart "
                                   "every node with --resume to continue from the last checkpoint")
        assert lost.value.__cause__ is error
    # Not a lost peer: running out of memory, another type of error, a PeerLost already named,
    # anything in a run of one process.
    for error in (torch.OutOfMemoryError("CUDA out of memory"), ValueError("bad config"), PeerLost("rank 1 of 4: x")):
        with pytest.raises(type(error)) as other, env.collective("the all-reduce of the loss"):
            raise error
        assert other.value is error
    with pytest.raises(RuntimeError) as alone, Dist().collective("a barrier"):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    assert not isinstance(alone.value, PeerLost)


def test_dist_timeout_must_be_positive():
    from specmae.schema import ConfigError
    from specmae.training.engine import setup
    with pytest.raises(ConfigError, match="train.dist_timeout: expected a positive number, got 0"):
        setup(tiny_run(dist_timeout=0).train)
