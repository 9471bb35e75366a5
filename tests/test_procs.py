"""Worker processes end with their parent, whatever kills it: specmae's process pools and
DataLoader workers (procs.py, by prctl or, where that is missing, by polling)."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first, then ppid, ...)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants, from the parent of each process in /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))):
            children.setdefault(int(stat[1]), []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    return tree


def descendants(pid: int) -> dict[int, str]:
    """{pid: start time} of the processes below `pid`; the start time tells a reused pid apart."""
    return {p: stat[19] for p in process_tree(pid)[1:] if (stat := _stat(p))}


def alive(processes: dict[int, str]) -> list[int]:
    """Those of `processes` still running (a zombie nobody reaps has ended)."""
    return [p for p, started in processes.items() if (stat := _stat(p)) and stat[19] == started and stat[0] != "Z"]


def kill_and_watch_children(proc: subprocess.Popen, n_children: int, wait: float = 60) -> tuple[dict, list[int]]:
    """Once `proc` has `n_children` descendants, kill it with SIGKILL; -> (those descendants, the
    ones still alive `wait` seconds later at most, polled; [] as soon as all have ended)."""
    deadline = time.monotonic() + wait
    while len(children := descendants(proc.pid)) < n_children:
        assert proc.poll() is None, f"ended with status {proc.returncode} before starting {n_children} workers"
        assert time.monotonic() < deadline, f"{len(children)} of {n_children} workers after {wait} s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + wait
    while (left := alive(children)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:  # do not leave them to the next test
        os.kill(pid, signal.SIGKILL)
    return children, left


def start(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *args],
                            env=dict(os.environ, OMP_NUM_THREADS="1"))


POOL = """
    import sys, time
    from specmae import procs
    if sys.argv[1] == "poll":  # a system without prctl
        procs._parent_death_signal = lambda sig: False
        procs.POLL_SECONDS = 0.1
    pool = procs.worker_pool(2)
    for _ in range(4):
        pool.submit(time.sleep, 3600)
    time.sleep(3600)
"""


@linux
@pytest.mark.parametrize("how", ["prctl", "poll"])
def test_pool_workers_end_when_their_parent_is_killed(how):
    children, left = kill_and_watch_children(start(POOL, how), 2)
    assert len(children) == 2 and left == [], (children, left)


DATALOADER = """
    import time, torch
    from specmae.procs import loader_workers

    class Slow(torch.utils.data.Dataset):
        def __len__(self):
            return 10 ** 6
        def __getitem__(self, i):
            time.sleep(0.01)
            return torch.zeros(4)

    for _ in torch.utils.data.DataLoader(Slow(), batch_size=None, **loader_workers(2)):
        pass
"""


@linux
def test_dataloader_workers_end_when_their_parent_is_killed_as_they_start():
    # torch's own watchdog would watch init in a worker whose parent died before it started.
    for _ in range(3):
        children, left = kill_and_watch_children(start(DATALOADER), 2)
        assert len(children) == 2 and left == [], (children, left)


@linux
def test_a_worker_whose_parent_is_already_gone_ends_at_once():
    # The parent died before the worker could ask to die with it: it now has another parent.
    script = "import sys; from specmae.procs import die_with_parent; die_with_parent(int(sys.argv[1])); print('ran')"
    for parent, code, out in ((os.getpid(), 0, "ran\n"), (os.getpid() + 1, 1, "")):
        run = subprocess.run([sys.executable, "-c", script, str(parent)], capture_output=True, text=True, timeout=60)
        assert (run.returncode, run.stdout) == (code, out), run.stderr



def test_training_reads_the_same_batches_from_worker_processes(tmp_path):
    from specmae.training.pretrain import pretrain
    from test_pretrain import tiny_run
    alone = pretrain(tiny_run(epochs=1), tmp_path / "alone", progress=False).model.state_dict()
    workers = pretrain(tiny_run(epochs=1, workers=2), tmp_path / "workers", progress=False).model.state_dict()
    assert all(torch.equal(workers[name], value) for name, value in alone.items())
