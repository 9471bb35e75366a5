"""One way out (specmae.outputs): every command that writes refuses an existing output it did not
make in the same words, moves it aside on --overwrite (deleting nothing), and a resumed run names
each setting that differs, then and now."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from specmae.audio import synth
from test_adversarial import FIXTURES, OFFICIAL, TINY_RUN, run_cli, snapshot

pytest.importorskip("matplotlib")

FINETUNE = ["--epochs", "1", "--batch-size", "4", "--workers", "0", "--probe", "none", "--quiet",
            "--set", "scale=none"]
VISUALIZE = ["--draws", "1", "--strategies", "random", "--no-sweep", "--no-patterns", "--no-audio"]

# Every command that writes: its argv with {out} for the output, and the suffix of an output file ("": a folder).
COMMANDS = {
    "pretrain": (["pretrain", "--out", "{out}", *TINY_RUN], ""),
    "prepare": (["prepare", "audio", "--out", "{out}", "--frames", "96", "--workers", "0", "--quiet"], ""),
    "embed": (["embed", "tiny-ckpt", "audio", "--out", "{out}", "--quiet"], ""),
    "embed --table": (["embed", "tiny-ckpt", "audio", "--table", "{out}", "--quiet"], ".npz"),
    "predict": (["predict", "tiny-ft", "audio", "--out", "{out}", "--quiet"], ".csv"),
    "evaluate": (["evaluate", "--model", "tiny-ckpt", "--task", "task.csv", "--out", "{out}", "--grid", "fast",
                  "--baselines", "none", "--no-plots"], ""),
    "finetune": (["finetune", "tiny-ckpt", "task.csv", "--out", "{out}", *FINETUNE], ""),
    "visualize": (["visualize", "tiny-ckpt", "audio/chirp_down/00000.wav", "--out", "{out}", *VISUALIZE], ""),
    "convert": (["convert", OFFICIAL, "{out}", "--heads", "3", "--decoder-heads", "4"], ""),
    "export": (["export", "tiny-ckpt", "--out", "{out}"], ".pt2"),
    "push --to-folder": (["push", "tiny-ckpt", "org/tiny", "--to-folder", "{out}"], ""),
}


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    from test_convert import official_state_dict

    root = tmp_path_factory.mktemp("outputs")
    shutil.copytree(FIXTURES / "checkpoint-v0.1", root / "tiny-ckpt")
    (root / OFFICIAL).parent.mkdir()
    torch.save({"model": official_state_dict(n_frames=32, dim=48, depth=1, d_dim=32, d_depth=1), "epoch": 1},
               root / OFFICIAL)
    meta = synth.write_corpus(root / "audio", 20, seed=3, duration=0.5)
    clips = [line.split(",")[0] for line in meta.read_text().splitlines()[1:]]
    (root / "task.csv").write_text("path,label,split\n" + "".join(
        f"audio/{c},{'ab'[i % 2]},{'train' if i < 12 else 'valid' if i < 16 else 'test'}\n"
        for i, c in enumerate(clips)))
    code, _, err = run_cli(["finetune", root / "tiny-ckpt", root / "task.csv", "--out", root / "tiny-ft", *FINETUNE])
    assert code == 0, err
    return root


@pytest.fixture
def world(template, tmp_path) -> Path:
    shutil.copytree(template, tmp_path / "w", symlinks=True)
    return tmp_path / "w"


def _argv(world: Path, command: str, out: Path) -> list[str]:
    return [str(out) if a == "{out}" else str(world / a) if (world / a).exists() else a for a in COMMANDS[command][0]]


@pytest.mark.slow
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_writing_command_refuses_a_foreign_output_in_one_wording_and_overwrite_moves_it_aside(world, command):
    suffix = COMMANDS[command][1]
    out = world / f"mine{suffix}"
    if suffix:
        out.write_bytes(b"precious")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("keep me\n")
    args = _argv(world, command, out)
    before = snapshot(world)
    code, _, err = run_cli(args)
    assert code == 2 and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert re.fullmatch(rf"specmae {command.split()[0]}: {re.escape(str(out))}: already holds (files|a file) \(.+\)\. "
                        r"Choose another output, pass --overwrite to move it aside \(nothing is deleted\)", line), line
    assert snapshot(world) == before

    code, _, err = run_cli(args + ["--overwrite"])
    assert code == 0, err
    [aside] = world.glob(out.name + ".old-*")
    assert re.fullmatch(re.escape(out.name) + r"\.old-\d{8}-\d{6}", aside.name) and aside.name in err
    assert (aside if suffix else aside / "notes.txt").read_bytes() == (b"precious" if suffix else b"keep me\n")
    assert out.exists() and (suffix or not (out / "notes.txt").exists())


@pytest.mark.slow
def test_finetune_resume_names_each_setting_that_differs(template, world):
    before = snapshot(world)
    # the checkpoint and task the run was made from (their paths are part of its settings)
    code, _, err = run_cli(["finetune", template / "tiny-ckpt", template / "task.csv", "--out", world / "tiny-ft",
                            "--resume", *FINETUNE, "--epochs", "2", "--set", "train.blr=0.01"])
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"specmae finetune: {world / 'tiny-ft'}: --resume with other settings than the run's "
                           f"({world / 'tiny-ft' / 'config.json'}): "), line
    assert "finetune.train.blr: 0.001 then, 0.01 now; finetune.train.epochs: 1 then, 2 now." in line, line
    assert snapshot(world) == before

    # both flags: refused, nothing touched
    code, _, err = run_cli(["finetune", template / "tiny-ckpt", template / "task.csv", "--out", world / "tiny-ft",
                            "--resume", "--overwrite", *FINETUNE])
    assert code == 2 and err.strip().endswith("--overwrite moves it aside; give one of them"), err
    assert snapshot(world) == before

    code, _, err = run_cli(["finetune", template / "tiny-ckpt", template / "task.csv", "--out", world / "tiny-ft",
                            *FINETUNE])
    assert code == 2 and re.search(r"already holds a fine-tuning run \(finished folds: model\)\. .*--overwrite.*"
                                   r"or --resume to continue it$", err.strip()), err
