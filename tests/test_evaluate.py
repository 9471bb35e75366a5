"""Downstream evaluation: tasks (CSV manifests, HEAR folders), bad input, caching, report, CLI."""

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from specmae.audio import synth
from specmae.audio import FrontendConfig
from specmae.checkpoint import save_checkpoint
from specmae.evaluation.evaluate import (ClipEmbedder, add_evaluate_arguments, cache_key, evaluate, run_evaluate_command, task_identity)
from specmae.evaluation.tasks import Task, TaskError, load_task, read_hear_task, read_manifest
from specmae.model.mae import MaskedAutoencoder
from specmae.model.presets import model_config
from specmae.evaluation.evaluate import builtin_comparison
from specmae.config import ProbeConfig
from specmae.evaluation.report import cell, chance, headline, mean_std, notes, table

pytest.importorskip("matplotlib")
QUICK = ProbeConfig(heads=("linear", "mlp1"), lrs=(3.2e-3, 1e-3), hidden=64, max_epochs=40, patience=5, batch_size=256)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    cfg = model_config("80x96p16x16", "tiny", dim=48, depth=2, heads=3, decoder_dim=32, decoder_depth=1,
                       decoder_heads=4)
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    return save_checkpoint(path, MaskedAutoencoder(cfg).state_dict(),
                           dict(model=cfg.to_dict(), frontend=FrontendConfig().to_dict(), norm_stats=[-7.0, 4.0]))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """48 clips of 1 s (12 classes), meta.csv: path,label,split with 'train' and 'test'."""
    return synth.write_corpus(tmp_path_factory.mktemp("corpus"), 48, seed=5, duration=1.0)


def write_manifest(path: Path, rows: list[tuple], header=("path", "label", "split")) -> Path:
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([header, *rows])
    return path


def meta_rows(meta: Path) -> list[list[str]]:
    return list(csv.reader(open(meta)))[1:]


def write_hear_task(root: Path, labels: dict[str, dict[str, list[str]]], meta: dict, vocab: list[str],
                    rate: int = 16000) -> Path:
    """A hear-preprocess style folder: task_metadata.json, labelvocabulary.csv, <split>.json and
    <rate>/<split>/<file> audio (class c of the built-in corpus for label vocab[c])."""
    root.mkdir(parents=True)
    (root / "task_metadata.json").write_text(json.dumps(meta))
    (root / "labelvocabulary.csv").write_text("idx,label\n" + "".join(f"{i},{c}\n" for i, c in enumerate(vocab)))
    for split, entries in labels.items():
        (root / f"{split}.json").write_text(json.dumps(entries))
        (root / str(rate) / split).mkdir(parents=True)
        for i, (name, labs) in enumerate(entries.items()):
            wave = synth.make_clip(vocab.index(labs[0]), np.random.default_rng([len(name), i]), 0.5, rate)
            sf.write(root / str(rate) / split / name, wave, rate)
    return root


# --- manifests and splits ---------------------------------------------------------------------------

def test_manifest_task_and_carved_validation(corpus):
    task = read_manifest(corpus)
    assert task.kind == "multiclass" and task.metric == "accuracy" and len(task) == 48
    assert task.classes == [str(i) for i in range(12)]  # numeric labels sorted by value
    (split,) = task.splits(seed=3)
    assert "15% of train" in split.note
    assert not set(split.train) & set(split.valid) and not set(split.valid) & set(split.test)
    assert sorted([*split.train, *split.valid]) == [i for i, g in enumerate(task.groups) if g == "train"]
    again = read_manifest(corpus).splits(seed=3)[0]
    np.testing.assert_array_equal(split.valid, again.valid)  # deterministic for a seed


def stratified_folds(corpus: Path, k: int) -> list[tuple]:
    """Rows with a fold column in which every class is in every fold (4 clips per class, k <= 4)."""
    seen: dict[str, int] = {}
    rows = []
    for p, label, _ in meta_rows(corpus):
        seen[label] = seen.get(label, -1) + 1
        rows.append((str(corpus.parent / p), label, f"f{seen[label] % k}"))
    return rows


def test_kfold_manifest_uses_next_fold_for_validation(corpus, tmp_path):
    task = read_manifest(write_manifest(tmp_path / "k.csv", stratified_folds(corpus, 3), ("path", "label", "fold")))
    assert task.folds
    splits = task.splits()
    assert [s.name for s in splits] == ["f0", "f1", "f2"]
    groups = np.array(task.groups)
    for s, valid, train in zip(splits, ["f1", "f2", "f0"], ["f2", "f0", "f1"]):
        assert set(groups[s.test]) == {s.name} and set(groups[s.valid]) == {valid}
        assert set(groups[s.train]) == {train}
    two = read_manifest(write_manifest(tmp_path / "k2.csv", stratified_folds(corpus, 2), ("path", "label", "fold")))
    splits = two.splits()  # two folds: the other fold trains and gives up a validation part
    assert len(splits) == 2 and "of fold f1" in splits[0].note
    groups = np.array(two.groups)
    assert set(groups[splits[0].train]) == set(groups[splits[0].valid]) == {"f1"}
    assert not set(splits[0].train) & set(splits[0].valid)


def test_single_fold_is_refused(corpus, tmp_path):
    rows = [(str(corpus.parent / p), label, "1") for p, label, _ in meta_rows(corpus)]
    task = read_manifest(write_manifest(tmp_path / "one.csv", rows, ("path", "label", "fold")))
    with pytest.raises(TaskError, match="single fold"):
        task.splits()


def test_bad_rows_are_all_reported_with_line_numbers(corpus, tmp_path):
    rows = [(str(corpus.parent / p), label, split) for p, label, split in meta_rows(corpus)]
    rows[0] = ("missing-1.wav", rows[0][1], rows[0][2])
    rows[5] = ("missing-2.wav", rows[5][1], rows[5][2])
    rows[7] = (rows[7][0], "", rows[7][2])
    rows[9] = (rows[9][0], rows[9][1], "holdout")
    with pytest.raises(TaskError) as err:
        read_manifest(write_manifest(tmp_path / "bad.csv", rows))
    msg = str(err.value)
    assert "4 problems" in msg
    for line, reason in [(2, "missing-1.wav: file not found"), (7, "missing-2.wav: file not found"),
                         (9, "empty label"), (11, "split 'holdout'")]:
        assert f"line {line}:" in msg and reason in msg


def test_unreadable_audio_stops_the_run_before_anything_is_embedded(corpus, tmp_path, tiny_ckpt):
    rows = [(str(corpus.parent / p), label, split) for p, label, split in meta_rows(corpus)]
    (tmp_path / "junk.wav").write_bytes(b"RIFF not really a wave file")
    (tmp_path / "empty.wav").write_bytes(b"")
    rows[3] = (str(tmp_path / "junk.wav"), rows[3][1], rows[3][2])
    rows[20] = (str(tmp_path / "empty.wav"), rows[20][1], rows[20][2])
    task = read_manifest(write_manifest(tmp_path / "m.csv", rows))
    calls = []
    spy = ClipEmbedder("spy", {"kind": "spy"}, 16000,
                       lambda waves: calls.append(len(waves)) or np.zeros((len(waves), 2)))
    with pytest.raises(TaskError) as err:
        evaluate([task], [tiny_ckpt], embedders=[spy], grid=QUICK)
    msg = str(err.value)
    assert "nothing was embedded" in msg and "m.csv line 5" in msg and "m.csv line 22" in msg
    assert "cannot decode" in msg and "empty file" in msg
    assert calls == []


def test_test_labels_unseen_in_training_are_refused(corpus, tmp_path):
    rows = [(str(corpus.parent / p), label, split) for p, label, split in meta_rows(corpus)]
    i = next(k for k, r in enumerate(rows) if r[2] == "test")
    rows[i] = (rows[i][0], "zebra", "test")
    with pytest.raises(TaskError, match="present in test but not in train: 'zebra' \\(1 clips\\)"):
        read_manifest(write_manifest(tmp_path / "m.csv", rows)).splits()


# --- HEAR task folders -------------------------------------------------------------------------------

VOCAB = ["whistle", "chirp_up", "vowel_a"]


def hear_labels(prefix: str, n: int) -> dict[str, list[str]]:
    return {f"{prefix}_{i}.wav": [VOCAB[i % 3]] for i in range(n)}


def test_hear_trainvaltest_task(tmp_path):
    meta = {"task_name": "toy", "version": "1", "embedding_type": "scene", "prediction_type": "multiclass",
            "split_mode": "trainvaltest", "evaluation": ["top1_acc", "mAP"], "splits": ["train", "valid", "test"]}
    root = write_hear_task(tmp_path / "toy-1-full", {s: hear_labels(s, n) for s, n in
                                                      [("train", 9), ("valid", 3), ("test", 6)]}, meta, VOCAB)
    task = load_task(root)
    assert (task.name, task.kind, task.metric, task.classes) == ("toy", "multiclass", "accuracy", VOCAB)
    assert task.paths[0] == root / "16000" / "train" / "train_0.wav"
    assert task.labels[:3] == [("whistle",), ("chirp_up",), ("vowel_a",)]
    (split,) = task.splits()
    assert (len(split.train), len(split.valid), len(split.test)) == (9, 3, 6)
    assert split.note == "validation: the valid split"


def test_hear_kfold_task_runs_every_fold(tmp_path, tiny_ckpt):
    # No 'splits' key (older metadata): folds come from nfolds; audio only at 48 kHz.
    meta = {"task_name": "toyfolds", "embedding_type": "scene", "prediction_type": "multiclass",
            "split_mode": "new_split_kfold", "nfolds": 3, "evaluation": ["top1_acc"]}
    root = write_hear_task(tmp_path / "toyfolds", {f"fold{k:02d}": hear_labels(f"f{k}", 6) for k in range(3)},
                           meta, VOCAB, rate=48000)
    task = read_hear_task(root)
    assert task.folds and task.paths[0].parent == root / "48000" / "fold00"
    splits = task.splits()
    assert [(s.name, s.note) for s in splits] == [("fold00", "validation: next fold (fold01)"),
                                                  ("fold01", "validation: next fold (fold02)"),
                                                  ("fold02", "validation: next fold (fold00)")]
    groups = np.array(task.groups)
    assert set(groups[splits[0].train]) == {"fold02"}
    report = evaluate([task], [tiny_ckpt], baselines=["logmel"], grid=QUICK)
    result = report["tasks"]["toyfolds"]["results"]["log-mel stats"]
    assert [f["name"] for f in result["folds"]] == ["fold00", "fold01", "fold02"]
    assert result["std"] is not None and 0 <= result["mean"] <= 1


def test_hear_empty_class_and_event_tasks_are_refused(tmp_path):
    meta = {"task_name": "gap", "embedding_type": "scene", "prediction_type": "multiclass",
            "split_mode": "trainvaltest", "evaluation": ["top1_acc"]}
    root = write_hear_task(tmp_path / "gap", {s: hear_labels(s, 6) for s in ("train", "valid", "test")}, meta,
                           VOCAB)
    (root / "labelvocabulary.csv").write_text("idx,label\n0,whistle\n1,chirp_up\n2,vowel_a\n3,silence\n")
    with pytest.raises(TaskError, match=r"empty class \['silence'\]"):
        read_hear_task(root)
    (root / "task_metadata.json").write_text(json.dumps({**meta, "embedding_type": "event"}))
    with pytest.raises(TaskError, match="only scene-level"):
        read_hear_task(root)


# --- runs ----------------------------------------------------------------------------------------------

def test_end_to_end_report_cache_and_determinism(corpus, tmp_path, tiny_ckpt):
    """The full protocol (12-config grid, patience 20, <= 500 epochs): about 5 s on 2 idle cores."""
    out = tmp_path / "out"
    first = evaluate([load_task(corpus, name="synth")], [tiny_ckpt], out=out, grid="full", seed=2)
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    assert files == ["comparison.png", "confusion_synth_log-mel-stats.png", "confusion_synth_pre-trained.png",
                     "confusion_synth_random-init.png", "report.json", "report.md"]
    saved = json.loads((out / "report.json").read_text())
    t = saved["tasks"]["synth"]
    assert list(t["results"]) == ["pre-trained", "random init", "log-mel stats"]
    assert [t["results"][m]["dim"] for m in t["results"]] == [5 * 48, 5 * 48, 160]
    fold = t["results"]["pre-trained"]["folds"][0]
    assert len(fold["grid"]) == 12 and np.sum(fold["confusion"]) == t["folds"][0]["test"]
    assert 0 <= fold["test"] <= 1 and not t["results"]["pre-trained"]["cached"]
    assert "| synth | accuracy | 1 |" in (out / "report.md").read_text()
    second = evaluate([load_task(corpus, name="synth")], [tiny_ckpt], out=out, grid="full", seed=2)
    again = second["tasks"]["synth"]["results"]
    assert all(r["cached"] for r in again.values())
    assert {m: r["folds"][0]["test"] for m, r in again.items()} == \
        {m: r["folds"][0]["test"] for m, r in first["tasks"]["synth"]["results"].items()}


def test_cache_key_follows_the_files_and_the_model(corpus, tmp_path):
    rows = [(str(corpus.parent / p), label, split) for p, label, split in meta_rows(corpus)][:12]
    copy = tmp_path / "a.wav"
    copy.write_bytes(Path(rows[0][0]).read_bytes())
    rows[0] = (str(copy), rows[0][1], rows[0][2])
    task = read_manifest(write_manifest(tmp_path / "m.csv", rows))
    e1 = ClipEmbedder("x", {"kind": "x", "seed": 1}, 16000, None)
    e2 = ClipEmbedder("x", {"kind": "x", "seed": 2}, 16000, None)
    key = cache_key(e1, task_identity(task))
    assert key == cache_key(e1, task_identity(task)) != cache_key(e2, task_identity(task))
    copy.write_bytes(copy.read_bytes()[:-2])  # the file changed: its embeddings are stale
    assert cache_key(e1, task_identity(task)) != key


def test_multilabel_task_scored_by_map(corpus, tmp_path, tiny_ckpt):
    rows = []
    for p, label, split in meta_rows(corpus):
        family = synth.CLASSES[int(label)]
        tags = ["tonal" if family in ("harmonic", "whistle", "chirp_up", "chirp_down", "fm_texture") else "noisy"]
        tags += ["voice"] if family.startswith("vowel") else []
        rows.append((str(corpus.parent / p), ";".join(tags), split))
    task = read_manifest(write_manifest(tmp_path / "tags.csv", rows), name="tags")
    assert task.kind == "multilabel" and task.metric == "mAP" and task.classes == ["noisy", "tonal", "voice"]
    out = tmp_path / "out"
    report = evaluate([task], [tiny_ckpt], out=out, baselines=["logmel"], grid=QUICK)
    assert 0 < report["tasks"]["tags"]["results"]["log-mel stats"]["mean"] <= 1
    assert not list(out.glob("confusion_*"))  # no confusion matrix for multi-label tasks


def test_binary_task_from_in_memory_audio(tiny_ckpt):
    waves, labels = synth.make_corpus(40, seed=7, duration=0.6)
    names = ["vowel" if synth.CLASSES[i].startswith("vowel") else "other" for i in labels]
    groups = ["test" if i % 4 == 3 else "train" for i in range(40)]
    task = Task.from_arrays("vowels", waves, names, groups, sample_rate=16000, kind="binary",
                            classes=["other", "vowel"])
    assert task.metric == "roc_auc"
    report = evaluate([task], [tiny_ckpt], baselines=[], grid=QUICK)
    assert list(report["tasks"]["vowels"]["results"]) == ["pre-trained"]
    assert report["tasks"]["vowels"]["chance"] == 0.5


def test_report_parts_shared_by_evaluate_and_finetune():
    """The fold notes say HEAR's rotation once and a binary task's positive class; scores x 100
    read 'mean ± std'; a command prints its report.md up to the first section."""
    waves = [np.full(160, i, np.float32) for i in range(12)]
    task = Task.from_arrays("rot", waves, ["no", "yes"] * 6, [f"f{i // 4}" for i in range(12)], sample_rate=16000,
                            kind="binary", classes=["no", "yes"], folds=True)
    splits = task.splits()
    assert notes(task, splits) == ["3 folds: each is the test part once, the next one in sorted order validates "
                                   "and the others train (HEAR's convention)", "positive class (ROC-AUC): 'yes'"]
    assert chance(task, splits) == 0.5
    assert cell(mean_std([0.5, 0.7])) == "60.0 ± 14.1" and cell(mean_std([0.25])) == "25.0" and cell(None) == "-"
    md = "\n".join(["# title", "", *table(["a", "b"], [[1, "x"]]), "", "## Section", "", "- more"])
    assert headline(md) == "# title\n\n| a | b |\n|---|---|\n| 1 | x |"


def test_report_without_matplotlib_keeps_its_numbers(corpus, tmp_path, tiny_ckpt, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        evaluate([load_task(corpus, name="synth")], [tiny_ckpt], out=out, baselines=[], grid=QUICK)
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["report.json", "report.md"]
    assert any("matplotlib is not installed" in r.message for r in caplog.records)


def test_cli_evaluate(corpus, tmp_path, tiny_ckpt, capsys):
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    out = tmp_path / "cli"
    args = parser.parse_args(["--model", str(tiny_ckpt), "--task", str(corpus), "name=digits",
                              "--task", str(corpus), "name=again", "--out", str(out), "--grid", "fast",
                              "--max-epochs", "30", "--baselines", "logmel"])
    run_evaluate_command(args)
    printed = capsys.readouterr().out
    assert "| digits | accuracy | 1 |" in printed and "| again |" in printed and "report.md" in printed
    assert "## Protocol" not in printed
    report = json.loads((out / "report.json").read_text())
    assert report["probe"]["max_epochs"] == 30
    # The same clips embed once: the second task reads them from the cache.
    assert all(r["cached"] for r in report["tasks"]["again"]["results"].values())
    bad = parser.parse_args(["--model", str(tiny_ckpt), "--task", str(corpus), "colour=red", "--out", str(out)])
    with pytest.raises(SystemExit, match="colour=red"):
        run_evaluate_command(bad)


def test_builtin_comparison_uses_the_runner(tiny_ckpt, tmp_path):
    results = builtin_comparison(tiny_ckpt, n_clips=48, out=tmp_path / "demo")
    assert list(results) == ["pre-trained", "random init", "log-mel stats", "chance"]
    assert all(0 <= v <= 1 for v in results.values())
    assert (tmp_path / "demo" / "report.md").is_file()


def test_fsdd_manifest_gives_digit_and_speaker_tasks(fsdd):
    digit = read_manifest(fsdd / "meta.csv", label="digit")
    speaker = read_manifest(fsdd / "meta.csv", label="speaker")
    assert (digit.name, speaker.name) == ("fsdd-digit", "fsdd-speaker")
    assert digit.classes == [str(d) for d in range(10)] and len(speaker.classes) == 6
    (split,) = digit.splits()
    assert len(split.test) == 300 and len(split.train) + len(split.valid) == 2700
    assert task_identity(digit) == task_identity(speaker)  # one embedding pass serves both
