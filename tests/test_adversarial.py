"""The CLI as an adversarial user drives it: every command x every class of bad input.

Cases are generated, not listed: each command's good invocation names its inputs and outputs
(slots), each kind of slot has its classes of bad value (missing, a file for a folder and the
reverse, an empty folder, a damaged checkpoint, an existing output, a bad config value), and
every pairing is one case. Each case asserts what a user is owed: exit status 2, one line naming
the input and the reason, no traceback, and every file that existed before the command
byte-for-byte unchanged, with nothing left behind.

`run_cli` and `snapshot` at the top are for any test that drives the CLI this way.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch

from specmae.audio import synth
from specmae.cli import main


def run_cli(argv: list) -> tuple[int, str, str]:
    """`specmae *argv` in this process -> (exit status, stdout, stderr), as a user would see them.

    Log records go to the captured stderr too; an exception escaping main() is written there as
    the traceback the user would get (status 1).
    """
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    root = logging.getLogger()
    root.addHandler(handler)
    before = list(root.handlers)
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main([str(a) for a in argv])
    except SystemExit as e:
        if isinstance(e.code, str):
            err.write(e.code + "\n")
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - a real process would print it and exit 1
        err.write(traceback.format_exc())
        code = 1
    finally:
        for h in set(root.handlers) - set(before) | {handler}:
            root.removeHandler(h)
    return code, out.getvalue(), err.getvalue()


def run_cli_process(argv: list) -> tuple[int, str, str]:
    """`specmae *argv` as a separate process -> (exit status, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "specmae.cli", *map(str, argv)], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    return proc.returncode, proc.stdout, proc.stderr


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` -> the SHA-256 of a file, 'dir' for a folder, 'link:<target>' for a link."""
    found = {}
    for path in sorted(Path(root).rglob("*")):
        key = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[key] = "link:" + os.readlink(path)
        elif path.is_dir():
            found[key] = "dir"
        else:
            found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def assert_user_error(code: int, err: str, command: str, names: str, reason: str) -> None:
    """Status 2, no traceback, and a last line `specmae <command>: ...` naming `names` and matching `reason`."""
    assert "Traceback" not in err, err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("specmae ")]
    assert len(lines) == 1 and err.rstrip().endswith(lines[0]), err
    assert lines[0].startswith(f"specmae {command}: "), lines[0]
    assert names in lines[0], f"{names!r} not named in: {lines[0]}"
    assert re.search(reason, lines[0], re.IGNORECASE), f"{reason!r} not in: {lines[0]}"


# ------------------------------------------------------------------------------------------------
# The world a user works in: a checkpoint, a trained run, official weights, audio and a task
# ------------------------------------------------------------------------------------------------

FIXTURES = Path(__file__).parent / "fixtures"
TINY_RUN = ["--preset", "80x96p16x16", "--size", "tiny", "--quiet", "--no-report", "--epochs", "1",
            "--batch-size", "8", "--workers", "0", "--checkpoint-every", "3", "--warmup-epochs", "1",
            "--set", "train.builtin_clips=48", "--set", "model.encoder.depth=2", "--set", "model.decoder.depth=1",
            "--set", "model.decoder.dim=32", "--set", "model.decoder.heads=4"]
OFFICIAL = "80x32p16x16_tiny/checkpoint-1.pth"


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    from test_convert import official_state_dict

    root = tmp_path_factory.mktemp("world")
    shutil.copytree(FIXTURES / "checkpoint-v0.1", root / "tiny-ckpt")
    code, _, err = run_cli(["pretrain", "--out", root / "tiny-run", *TINY_RUN])
    assert code == 0, err
    (root / OFFICIAL).parent.mkdir()
    torch.save({"model": official_state_dict(n_frames=32, dim=48, depth=1, d_dim=32, d_depth=1), "epoch": 1},
               root / OFFICIAL)
    meta = synth.write_corpus(root / "audio", 12, seed=3, duration=0.5)
    clips = [line.split(",")[0] for line in meta.read_text().splitlines()[1:]]
    (root / "task.csv").write_text("path,label,split\n" + "".join(
        f"audio/{c},{'ab'[i % 2]},{'train' if i < 6 else 'valid' if i < 9 else 'test'}\n" for i, c in enumerate(clips)))
    code, _, err = run_cli(["embed", root / "tiny-ckpt", root / "audio", "--out", root / "old-emb", "--quiet"])
    assert code == 0, err
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("not audio\n")
    (root / "notes.txt").write_text("a file, not a folder\n")
    (root / "empty").mkdir()
    return root


@pytest.fixture
def world(template, tmp_path) -> Path:
    shutil.copytree(template, tmp_path / "w", symlinks=True)
    return tmp_path / "w"


# Each command's good invocation; {slot} is replaced by the slot's default, or by a bad value.
COMMANDS = {
    "pretrain": (["pretrain", "{data}", "--out", "{run_out}", *TINY_RUN],
                 {"data": "audio", "run_out": "new-run"}),
    "prepare": (["prepare", "{audio_src}", "--out", "{corpus_out}", "--frames", "96", "--workers", "0"],
                {"audio_src": "audio", "corpus_out": "new-corpus"}),
    "embed": (["embed", "{checkpoint}", "{audio_in}", "--out", "{emb_out}", "--quiet"],
              {"checkpoint": "tiny-ckpt", "audio_in": "audio", "emb_out": "new-emb"}),
    "embed --table": (["embed", "{checkpoint}", "{audio_in}", "--table", "{table_out}", "--quiet"],
                      {"checkpoint": "tiny-ckpt", "audio_in": "audio", "table_out": "clips.npz"}),
    "convert": (["convert", "{official}", "{ckpt_out}", "--heads", "3", "--decoder-heads", "4"],
                {"official": OFFICIAL, "ckpt_out": "converted"}),
    "export": (["export", "{checkpoint}", "--out", "{file_out}"],
               {"checkpoint": "tiny-ckpt", "file_out": "encoder.pt2"}),
    "evaluate": (["evaluate", "--model", "{checkpoint}", "--task", "{task}", "--out", "{eval_out}", "--grid", "fast",
                  "--baselines", "none", "--no-plots"],
                 {"checkpoint": "tiny-ckpt", "task": "task.csv", "eval_out": "new-eval"}),
}


def _damage_checkpoint(world: Path, edit) -> str:
    folder = world / "broken-ckpt"
    shutil.copytree(world / "tiny-ckpt", folder)
    edit(folder)
    return "broken-ckpt"


def _edit_config(change):
    def edit(folder: Path):
        config = json.loads((folder / "config.json").read_text())
        change(config)
        (folder / "config.json").write_text(json.dumps(config))
    return edit


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _latest_names(world: Path, name: str) -> str:
    (world / "tiny-run/checkpoints/latest").write_text(name)
    return "tiny-run"


MISSING = r"no such|not found|does not exist"
# For each kind of slot: bad value -> (make it in the world and return the argument, reason named).
BAD = {
    "input": {  # any input path
        "missing": (lambda w: "no-such-thing", MISSING),
    },
    "audio": {  # a folder (or file) of audio
        "empty folder": (lambda w: "empty", r"no audio files"),
        "folder without audio": (lambda w: "notes", r"no audio files|could be read"),
    },
    "checkpoint": {
        "text file": (lambda w: "notes.txt", r"not a specmae checkpoint|not a readable"),
        "empty folder": (lambda w: "empty", r"not a specmae checkpoint"),
        "folder of other things": (lambda w: "notes", r"not a specmae checkpoint"),
        "config.json not JSON": (lambda w: _damage_checkpoint(w, lambda f: (f / "config.json").write_text("{oops")),
                                 r"unreadable checkpoint config"),
        "config.json a list": (lambda w: _damage_checkpoint(w, lambda f: (f / "config.json").write_text("[1]")),
                               r"not a specmae checkpoint config"),
        "config.json without norm_stats": (lambda w: _damage_checkpoint(w, _edit_config(lambda c: c.pop("norm_stats"))),
                                           r"norm_stats: missing"),
        "config.json mistyped field": (
            lambda w: _damage_checkpoint(w, _edit_config(lambda c: c["model"]["encoder"].update(dim="wide"))),
            r"invalid checkpoint config.*model.encoder.dim"),
        "config.json unknown field": (
            lambda w: _damage_checkpoint(w, _edit_config(lambda c: c["frontend"].update(n_melz=80))),
            r"invalid checkpoint config.*n_melz"),
        "weights truncated": (lambda w: _damage_checkpoint(w, lambda f: _truncate(f / "model.safetensors")),
                              r"unreadable weights"),
        "weights missing": (lambda w: _damage_checkpoint(w, lambda f: (f / "model.safetensors").unlink()),
                            r"not a specmae checkpoint"),
        "run whose latest names nothing": (lambda w: _latest_names(w, "step-99999999"), r"latest.*not a checkpoint"),
        "run whose latest escapes": (lambda w: _latest_names(w, "../../tiny-ckpt"), r"latest.*not a checkpoint"),
    },
    "official": {
        "text file": (lambda w: "notes.txt", r"not a readable weights file"),
        "folder": (lambda w: "notes", r"is a folder, expected an official weights file"),
        "truncated": (lambda w: (_truncate(w / OFFICIAL), OFFICIAL)[1], r"not a readable weights file"),
        "pickled code": (lambda w: (torch.save({"model": {"x": Path("a")}}, w / OFFICIAL), OFFICIAL)[1],
                         r"refused.*pickled Python objects|not a readable"),
        "not a state dict": (lambda w: (torch.save([1, 2], w / OFFICIAL), OFFICIAL)[1], r"expected a state dict"),
    },
    "task": {
        "empty folder": (lambda w: "empty", r"task|manifest|csv"),
        "text file": (lambda w: "notes.txt", r"columns.*expected|manifest"),
        "manifest naming missing audio": (
            lambda w: ((w / "task.csv").write_text("path,label,split\nnope.wav,1,train\nno.wav,2,test\n"),
                       "task.csv")[1], r"nope\.wav|missing|not found|problem"),
    },
    "folder out": {  # an output folder
        "a file": (lambda w: "notes.txt", r"is a file|already holds a file"),
        "a folder of other things": (lambda w: "notes", r"already holds files \("),
        "under a file": (lambda w: "notes.txt/out", r"notes.txt is a file, not a folder"),
    },
    "file out": {  # an output file
        "a folder": (lambda w: "notes", r"is a folder|exists"),
        "under a file": (lambda w: "notes.txt/out.npz", r"notes.txt is a file, not a folder"),
        "an existing file": (lambda w: ((w / "mine.npz").write_bytes(b"precious"), "mine.npz")[1],
                             r"already holds a file|unreadable"),
    },
}

SLOT_KINDS = {
    "data": ["input", "audio"], "audio_src": ["input", "audio"], "audio_in": ["input", "audio"],
    "checkpoint": ["input", "checkpoint"], "official": ["input", "official"], "task": ["input", "task"],
    "run_out": ["folder out"], "corpus_out": ["folder out"], "emb_out": ["folder out"], "ckpt_out": ["folder out"],
    "eval_out": ["folder out"], "table_out": ["file out"], "file_out": ["file out"],
}

# An output made before, that the command must not write over: command -> (slot, value, reason).
EXISTING_OUTPUTS = {
    "pretrain": ("run_out", "tiny-run", r"already holds a run.*--overwrite.*--resume"),
    "convert": ("ckpt_out", "tiny-ckpt", r"already holds files.*--overwrite"),
    "embed": ("emb_out", "old-emb", r"other settings"),  # made with tiny-ckpt; this case embeds with tiny-run
    "export": ("file_out", "tiny-ckpt/model.safetensors", r"already holds a file.*--overwrite"),
}

# Bad configuration values (pretrain, prepare): extra arguments -> the field or file named.
BAD_CONFIGS = [
    (["--set", "train.epochs=0"], "train.epochs"),
    (["--set", "train.epochs=many"], "train.epochs"),
    (["--set", "nosuch.field=1"], "nosuch"),
    (["--set", "frontend.n_melz=80"], "n_melz"),
    (["--set", "frontend.n_mels"], "frontend.n_mels"),
    (["--config", "notes.txt"], "notes.txt"),
    (["--config", "notes"], "notes"),
    (["--config", "no-such.yaml"], "no-such.yaml"),
]


def _cases():
    for command, (argv, slots) in COMMANDS.items():
        for slot in slots:
            for kind in SLOT_KINDS[slot]:
                for bad, (make, reason) in BAD[kind].items():
                    yield pytest.param(command, slot, make, reason, None, None, id=f"{command}-{slot}-{bad}")
    for command, (slot, value, reason) in EXISTING_OUTPUTS.items():
        yield pytest.param(command, slot, lambda w, v=value: v, reason, None, None,
                           id=f"{command}-{slot}-existing output")
    for command in ("pretrain", "prepare"):
        for extra, named in BAD_CONFIGS:
            yield pytest.param(command, None, None, "", extra, named, id=f"{command}-config {' '.join(extra)}")


def _argv(world: Path, command: str, values: dict, extra: list | None) -> list[str]:
    argv, slots = COMMANDS[command]
    values = {**slots, **values}
    if command == "embed" and values["emb_out"] == "old-emb":
        values["checkpoint"] = "tiny-run"  # old-emb was made with tiny-ckpt
    args = [str(world / values[a[1:-1]]) if a.startswith("{") else a for a in argv]
    return args + [str(world / e) if (world / e).exists() or e.endswith(".yaml") else e for e in extra or []]


@pytest.mark.parametrize("command, slot, make, reason, extra, named", list(_cases()))
def test_bad_input_is_one_line_and_changes_nothing(world, command, slot, make, reason, extra, named):
    value = make(world) if make else None
    argv = _argv(world, command, {slot: value} if slot else {}, extra)
    before = snapshot(world)
    code, _, err = run_cli(argv)
    assert_user_error(code, err, command.split()[0], named or Path(value).name, reason)
    after = snapshot(world)
    assert {k: v for k, v in before.items() if after.get(k) != v} == {}, "pre-existing files changed"
    assert sorted(set(after) - set(before)) == [], "files left behind"


# ------------------------------------------------------------------------------------------------
# The same, as a real process
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, names, reason", [
    (["convert", OFFICIAL, "tiny-ckpt", "--heads", "3", "--decoder-heads", "4"], "tiny-ckpt", "already holds files"),
    (["pretrain", "--out", "tiny-run", *TINY_RUN], "tiny-run", "already holds a run"),
])
def test_a_real_process_refuses_with_status_2_and_one_line(world, argv, names, reason):
    argv = [str(world / a) if (world / a).exists() else a for a in argv]
    before = snapshot(world)
    code, _, err = run_cli_process(argv)
    assert_user_error(code, err, argv[0], names, reason)
    assert snapshot(world) == before


# ------------------------------------------------------------------------------------------------
# Resuming: checks before any write, fallback past damaged checkpoints
# ------------------------------------------------------------------------------------------------

RESUME = ["pretrain", "--out", "tiny-run", "--resume", "--quiet", "--no-report"]
CHECKPOINT_FILES = ["config.json", "model.safetensors", "train_state.pt"]


def _damage_all(world: Path, name: str) -> None:
    for folder in (world / "tiny-run/checkpoints").glob("step-*"):
        _truncate(folder / name)


def _only_config(world: Path) -> None:
    shutil.rmtree(world / "tiny-run/checkpoints")
    (world / "tiny-run/config.json").write_text("{not json")


@pytest.mark.parametrize("damage, extra, names, reason", [
    *[(lambda w, n=n: _damage_all(w, n), [], "checkpoints", f"no checkpoint can be resumed from.*{re.escape(n)}")
      for n in CHECKPOINT_FILES],
    (None, ["--set", "model.encoder.depth=3", "--epochs", "2"], "tiny-run",
     r"other settings.*model.encoder.depth: 2 then, 3 now; train.epochs: 1 then, 2 now"),
    (None, ["--seed", "7"], "tiny-run", r"train.seed: 0 then, 7 now"),
    (None, ["--masking", "dwm"], "tiny-run", r"masking.strategy: 'random' then, 'dwm' now"),
    (None, ["--overwrite"], "tiny-run", r"give one of them"),
    (_only_config, [], "config.json", r"unreadable run config.*no checkpoint"),
    (lambda w: (w / "tiny-run/checkpoints/latest").write_bytes(b"\xff\xfe"), ["--set", "train.blr=1"],
     "tiny-run", r"train.blr"),
], ids=[f"damaged {n}" for n in CHECKPOINT_FILES] + ["other model", "other seed", "other masking",
                                                    "with --overwrite", "unreadable config, no checkpoint",
                                                    "other lr, bad pointer"])
def test_a_resume_that_cannot_continue_the_run_changes_nothing(world, damage, extra, names, reason):
    if damage:
        damage(world)
    before = snapshot(world)
    code, _, err = run_cli([a if a.startswith("-") or a == "pretrain" else world / a for a in RESUME] + extra)
    assert_user_error(code, err, "pretrain", names, reason)
    assert snapshot(world) == before


@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_resume_falls_back_past_a_damaged_latest_checkpoint(world, name):
    _truncate(world / "tiny-run/checkpoints/step-00000006" / name)
    config = (world / "tiny-run/config.json").read_bytes()
    code, out, err = run_cli([a if a.startswith("-") or a == "pretrain" else world / a for a in RESUME])
    assert code == 0, err
    assert re.search(r"skipping checkpoint .*step-00000006.*" + re.escape(name), err), err
    assert "resumed from" in err and "step-00000003" in err
    assert (world / "tiny-run/config.json").read_bytes() == config
    assert (world / "tiny-run/checkpoints/latest").read_text().strip() == "step-00000006"
    from specmae.checkpoint import load
    assert load(world / "tiny-run").step == 6  # the damaged one was trained again


def test_resume_uses_the_runs_own_config_and_skips_an_unreadable_one(world):
    (world / "tiny-run/config.json").write_text("{damaged")
    code, _, err = run_cli([a if a.startswith("-") or a == "pretrain" else world / a for a in RESUME])
    assert code == 0, err
    assert "config.json: unreadable" in err
    assert json.loads((world / "tiny-run/config.json").read_text())["model"]["encoder"]["depth"] == 2


def test_overwrite_moves_a_run_aside_and_deletes_nothing(world):
    old = snapshot(world / "tiny-run")
    code, _, err = run_cli(["pretrain", "--out", world / "tiny-run", "--overwrite", *TINY_RUN, "--epochs", "2"])
    assert code == 0, err
    [aside] = world.glob("tiny-run.old-*")
    assert re.fullmatch(r"tiny-run\.old-\d{8}-\d{6}", aside.name) and str(aside.name) in err
    assert snapshot(aside) == old
    from specmae.checkpoint import load
    assert load(world / "tiny-run").step == 12


def test_convert_overwrite_moves_the_old_checkpoint_aside(world):
    old = snapshot(world / "tiny-ckpt")
    code, out, err = run_cli(["convert", world / OFFICIAL, world / "tiny-ckpt", "--heads", "3", "--decoder-heads", "4",
                              "--overwrite"])
    assert code == 0, err
    [aside] = world.glob("tiny-ckpt.old-*")
    assert aside.name in err and snapshot(aside) == old
    from specmae.checkpoint import load
    assert load(world / "tiny-ckpt").imported["format"] == "msm-mae"


def test_export_overwrite_moves_the_old_file_aside(world):
    (world / "enc.pt2").write_bytes(b"an older export")
    code, _, err = run_cli(["export", world / "tiny-ckpt", "--out", world / "enc.pt2", "--overwrite"])
    assert code == 0, err
    [aside] = world.glob("enc.pt2.old-*")
    assert aside.read_bytes() == b"an older export" and (world / "enc.pt2").stat().st_size > 1000
    assert not list(world.glob(".enc*"))


# ------------------------------------------------------------------------------------------------
# Embedding: the checkpoint recorded by content, re-runs, error tables
# ------------------------------------------------------------------------------------------------

def test_embed_records_the_checkpoint_it_resolved_to_and_refuses_a_newer_one(world):
    emb, pointer = world / "emb", world / "tiny-run/checkpoints/latest"
    pointer.write_text("step-00000003\n")  # the run as it was earlier in its training
    argv = ["embed", world / "tiny-run", world / "audio", "--out", emb, "--quiet"]
    assert run_cli(argv)[0] == 0
    recorded = json.loads((emb / "specmae-embed.json").read_text())["checkpoint"]
    folder = world / "tiny-run/checkpoints/step-00000003"
    assert recorded["path"] == str(folder.resolve()) and recorded["step"] == 3
    assert recorded["config_sha256"] == hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()
    assert recorded["weights_sha256"] == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()

    code, out, _ = run_cli(argv)  # same checkpoint: resumes, nothing to do
    assert code == 0 and "embedded 0 files" in out and "skipped 12 already done" in out

    pointer.write_text("step-00000006\n")  # the run trained further
    before = snapshot(world)
    code, _, err = run_cli(argv)
    assert_user_error(code, err, "embed", "emb", r"other settings: checkpoint: .*step-00000003 \(step 3\) then, "
                                                  r".*step-00000006 \(step 6\) now")
    assert snapshot(world) == before

    code, _, err = run_cli(argv + ["--overwrite"])
    assert code == 0, err
    [aside] = world.glob("emb.old-*")
    assert {k: v for k, v in snapshot(world).items() if k.startswith(aside.name + "/")} == \
        {f"{aside.name}/{k[4:]}": v for k, v in before.items() if k.startswith("emb/")}
    assert json.loads((emb / "specmae-embed.json").read_text())["checkpoint"]["step"] == 6


def test_embed_of_a_copied_checkpoint_is_the_same_model(world):
    """Identity is by content: the same checkpoint elsewhere resumes the job; other weights do not."""
    assert run_cli(["embed", world / "tiny-ckpt", world / "audio", "--table", world / "t.csv", "--quiet"])[0] == 0
    shutil.copytree(world / "tiny-ckpt", world / "copy-ckpt")
    code, out, err = run_cli(["embed", world / "copy-ckpt", world / "audio", "--table", world / "t.csv", "--quiet"])
    assert code == 0 and "skipped 12 already done" in out, err
    weights = world / "copy-ckpt/model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    code, _, err = run_cli(["embed", world / "copy-ckpt", world / "audio", "--table", world / "t.csv", "--quiet"])
    assert_user_error(code, err, "embed", "t.csv", r"other settings: checkpoint: .*copy-ckpt")


def test_error_tables_survive_tabs_and_newlines_in_file_names(world):
    from specmae.outputs import read_errors

    names = ["tab\there.wav", "new\nline.wav", "back\\slash\\t.wav", "cr\rx.wav"]
    for name in names:
        (world / "audio" / name).write_bytes(b"RIFF broken")
    for argv, errors in [(["--out", world / "e"], world / "e/errors.tsv"),
                         (["--table", world / "t.csv"], world / "t.csv.errors.tsv")]:
        code, out, err = run_cli(["embed", world / "tiny-ckpt", world / "audio", *argv, "--quiet"])
        assert code == 1 and "failed 4" in out, err
        rows = read_errors(errors)
        assert sorted(name for name, _ in rows) == sorted(names)
        assert len(errors.read_text().splitlines()) == 4 and all(len(line.split("\t")) == 2
                                                                 for line in errors.read_text().splitlines())
        assert all("cannot decode" in reason or "audio" in reason for _, reason in rows)
    table = world / "t.csv"
    import csv
    assert len(list(csv.reader(open(table, newline="")))) == 13  # header + the 12 good clips
