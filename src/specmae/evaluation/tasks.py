"""Downstream tasks for evaluation: CSV manifests and HEAR 2021 task folders.

A CSV manifest has a header with `path` (relative to the manifest's folder), a label column
(`label`; several labels separated by ';' make a multi-label task) and either `split`
(train / valid / test; without valid rows a stratified 15 % of train is carved out as
validation) or `fold` (k-fold: each fold is the test part once, the next fold in sorted order
validates, the rest trains - the HEAR convention). A HEAR task folder has task_metadata.json,
labelvocabulary.csv, one <split>.json label file per split or fold, and audio under
<sample_rate>/<split>/.

Every row is checked before anything is embedded: missing files, labels or split values that
make no sense are all reported at once, by row. A task with a single class, or with a test clip
that is also a train or valid clip (same file, or same samples), is refused.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..audio.inputs import read_clips
from .metrics import KINDS, METRICS, score

log = logging.getLogger(__name__)


DEFAULT_METRIC = {"multiclass": "accuracy", "multilabel": "mAP", "binary": "roc_auc"}
HEAR_METRICS = {"top1_acc": "accuracy", "mAP": "mAP", "aucroc": "roc_auc"}
SPLIT_NAMES = {"train": "train", "training": "train", "valid": "valid", "val": "valid", "validation": "valid",
               "dev": "valid", "test": "test", "eval": "test", "evaluation": "test"}
TASK_OPTIONS = ("name", "label", "group", "type", "metric", "sep", "positive", "sample_rate")
GENERIC_NAMES = {"meta", "metadata", "manifest", "labels", "index", "data"}  # named by their folder instead
MAX_LISTED = 40


class TaskError(ValueError):
    """A task that cannot be evaluated as given; the message names the file, rows and reason."""


def problems_error(header: str, problems: list[str]) -> TaskError:
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return TaskError(f"{header} ({len(problems)} problem{'s' * (len(problems) > 1)}):\n  "
                     + "\n  ".join(problems[:MAX_LISTED]) + more)


def _natural(values) -> list[str]:
    """Sorted, numbers by value ('2' before '10')."""
    return sorted(set(values), key=lambda v: (0, float(v), v) if re.fullmatch(r"-?\d+(\.\d*)?", v) else (1, 0.0, v))


# --- tasks ---------------------------------------------------------------------------------------

@dataclass
class Split:
    """Clip indices of one evaluation round: a fold, or the single train/valid/test split."""
    name: str
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    note: str = ""


@dataclass
class Task:
    """A labelled scene-level task. Clip i: labels[i] (a tuple of class names), groups[i] (its
    split - 'train', 'valid', 'test' - or its fold name), refs[i] (how messages name it), and its
    audio: paths[i], or waves[i] at `sample_rate` for in-memory tasks."""
    name: str
    kind: str
    metric: str
    classes: list[str]
    labels: list[tuple[str, ...]]
    groups: list[str]
    folds: bool
    refs: list[str]
    source: str
    paths: list[Path] | None = None
    waves: list[np.ndarray] | None = None
    sample_rate: int | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.kind not in KINDS or self.metric not in METRICS:
            raise TaskError(f"task {self.name}: type {self.kind!r} / metric {self.metric!r}: "
                            f"allowed types {KINDS}, metrics {METRICS}")
        index = {c: i for i, c in enumerate(self.classes)}
        unknown = sorted({c for ls in self.labels for c in ls if c not in index})
        if unknown:
            raise TaskError(f"task {self.name} ({self.source}): labels {unknown[:10]} are not in its class list")
        counts = np.bincount([index[c] for ls in self.labels for c in ls], minlength=len(self.classes))
        if (counts == 0).any():
            empty = [self.classes[i] for i in np.flatnonzero(counts == 0)]
            raise TaskError(f"task {self.name} ({self.source}): empty class{'es' * (len(empty) > 1)} "
                            f"{empty[:10]}: declared but no clip carries {'them' if len(empty) > 1 else 'it'}")
        if not self.labels:
            raise TaskError(f"task {self.name} ({self.source}): no clips")
        if len(set(self.labels)) < 2:
            raise TaskError(f"task {self.name} ({self.source}): every clip carries the same label"
                            f"{'s' * (len(self.labels[0]) != 1)} {list(self.labels[0])}: any probe scores 100 % on "
                            "a single-class task, whatever the features; it needs at least two classes")
        if self.kind == "binary" and len(self.classes) != 2:
            raise TaskError(f"task {self.name}: a binary task needs exactly 2 classes, found "
                            f"{len(self.classes)}: {self.classes[:10]}")
        if self.kind != "multilabel":
            bad = [f"{r}: {len(ls)} labels {list(ls)}" for r, ls in zip(self.refs, self.labels) if len(ls) != 1]
            if bad:
                raise problems_error(f"task {self.name}: a {self.kind} task needs exactly one label per clip", bad)

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def from_arrays(cls, name: str, waves: Sequence[np.ndarray], labels: Sequence, groups: Sequence[str], *,
                    sample_rate: int, classes: Sequence[str] | None = None, kind: str | None = None,
                    metric: str | None = None, folds: bool = False) -> "Task":
        """An in-memory task: waves (S_i,) float samples at sample_rate (checked by audio.read_clips,
        named `clip i`); labels: a class name per clip, or a list of names (multi-label); groups:
        split names or fold names."""
        labels = [tuple(str(v) for v in l) if isinstance(l, (list, tuple)) else (str(l),) for l in labels]
        kind = kind or ("multilabel" if any(len(l) != 1 for l in labels) else "multiclass")
        classes = [str(c) for c in classes] if classes is not None else _natural(c for l in labels for c in l)
        groups = [str(g) for g in groups] if folds else [SPLIT_NAMES.get(str(g).lower(), str(g)) for g in groups]
        if len(waves) != len(labels):
            raise TaskError(f"task {name}: {len(waves)} waves for {len(labels)} labels")
        refs = [f"clip {i}" for i in range(len(labels))]
        clips = read_clips(list(waves), sample_rate, sample_rate, names=refs, device="cpu", argument="waves")
        return cls(name, kind, metric or DEFAULT_METRIC[kind], classes, labels, groups, folds, refs,
                   f"<{name}: in memory>", waves=[w.numpy() for w in clips.waves], sample_rate=clips.sample_rate)

    @functools.cached_property
    def identities(self) -> list | None:
        """Per clip, what makes two clips the same audio: the file (device and inode, so symlinks,
        hard links and other spellings of one path agree) or a digest of the samples."""
        if self.waves is not None:
            return [(w.shape, str(w.dtype), hashlib.blake2b(np.ascontiguousarray(w).tobytes()).hexdigest())
                    for w in self.waves]
        return [_file_identity(p) for p in self.paths] if self.paths is not None else None

    def targets(self) -> np.ndarray:
        """(N,) class indices, or (N, C) 0/1 for multi-label tasks."""
        index = {c: i for i, c in enumerate(self.classes)}
        if self.kind != "multilabel":
            return np.array([index[ls[0]] for ls in self.labels], np.int64)
        out = np.zeros((len(self), len(self.classes)), np.uint8)
        for i, ls in enumerate(self.labels):
            out[i, [index[c] for c in ls]] = 1
        return out

    def splits(self, seed: int = 0, valid_fraction: float = 0.15) -> list[Split]:
        """The evaluation rounds, checked (see check_split)."""
        groups = np.array(self.groups)
        if self.folds:
            names = _natural(self.groups)
            if len(names) < 2:
                raise TaskError(f"task {self.name} ({self.source}): the fold column has a single fold "
                                f"({names[0]!r}); k-fold evaluation needs at least 2 folds (3 to keep a "
                                "separate validation fold) - use a split column (train/test) instead")
            out = []
            for i, test in enumerate(names):
                valid = names[(i + 1) % len(names)]
                rest = [f for f in names if f not in (test, valid)]
                if rest:
                    split = Split(test, np.flatnonzero(np.isin(groups, rest)), np.flatnonzero(groups == valid),
                                  np.flatnonzero(groups == test), f"validation: next fold ({valid})")
                else:  # two folds: the other one trains, and gives up a validation part
                    train, carved = self._carve(np.flatnonzero(groups == valid), seed + i, valid_fraction)
                    split = Split(test, train, carved, np.flatnonzero(groups == test),
                                  f"validation: {valid_fraction:.0%} of fold {valid}, stratified, seed {seed + i}")
                out.append(split)
        else:
            present = set(self.groups)
            unknown = sorted(present - {"train", "valid", "test"})
            if unknown:
                raise TaskError(f"task {self.name} ({self.source}): splits {unknown}: expected train, valid, test")
            if not {"train", "test"} <= present:
                raise TaskError(f"task {self.name} ({self.source}): needs 'train' and 'test' clips, found "
                                f"splits {sorted(present)}")
            train, test = np.flatnonzero(groups == "train"), np.flatnonzero(groups == "test")
            if "valid" in present:
                out = [Split("test", train, np.flatnonzero(groups == "valid"), test, "validation: the valid split")]
            else:
                train, valid = self._carve(train, seed, valid_fraction)
                out = [Split("test", train, valid, test, f"validation: {valid_fraction:.0%} of train, "
                             f"stratified, seed {seed} (the task has no valid split)")]
        for s in out:
            self.check_split(s)
        return out

    def _carve(self, idx: np.ndarray, seed: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
        """Deterministic stratified hold-out of `fraction` of idx (by first label); classes with a
        single clip stay in train. -> (train, valid), both sorted."""
        rng = np.random.default_rng([seed, 17])
        first = np.array([self.labels[i][0] if self.labels[i] else "" for i in idx])
        valid = []
        for c in _natural(first):
            members = rng.permutation(idx[first == c])
            if len(members) >= 2:
                valid.extend(members[:max(1, round(fraction * len(members)))])
        valid = np.sort(np.array(valid, np.int64))
        return np.setdiff1d(idx, valid), valid

    def _check_disjoint(self, s: Split, where: str) -> None:
        """No test clip is also a train or valid clip: a probe scored on clips it was fitted or
        early-stopped on measures memory, not the features."""
        ids = self.identities
        if ids is None:
            return
        test = {ids[i]: i for i in s.test}
        shared = [(test[ids[j]], j) for j in np.concatenate([s.train, s.valid]) if ids[j] in test]
        if shared:
            n = len({t for t, _ in shared})
            listed = ", ".join(f"{self.refs[t]} = {self.refs[j]}" for t, j in shared[:3])
            more = f" and {len(shared) - 3} more" if len(shared) > 3 else ""
            raise TaskError(f"{where}: {n} test clip{'s' * (n > 1)} {'are' if n > 1 else 'is'} also in train or "
                            f"valid (same {'audio' if self.waves is not None else 'file'}: {listed}{more}); "
                            "a score on clips the probe trained on says nothing about the features")

    def check_split(self, s: Split) -> None:
        """Every part non-empty, no clip both in test and in train or valid, no test class unseen
        in training, the metric defined on valid and test."""
        where = f"task {self.name} ({self.source}), {'fold ' + s.name if self.folds else 'split'}"
        for part in ("train", "valid", "test"):
            if len(getattr(s, part)) < (2 if part == "train" else 1):
                raise TaskError(f"{where}: the {part} part has {len(getattr(s, part))} clips")
        self._check_disjoint(s, where)
        y = self.targets()
        seen = (y[s.train].sum(0) > 0) if y.ndim == 2 else np.isin(np.arange(len(self.classes)), y[s.train])
        tested = (y[s.test].sum(0) > 0) if y.ndim == 2 else np.isin(np.arange(len(self.classes)), y[s.test])
        unseen = np.flatnonzero(tested & ~seen)
        if len(unseen):
            counts = (y[s.test][:, unseen].sum(0) if y.ndim == 2 else [(y[s.test] == c).sum() for c in unseen])
            listed = ", ".join(f"{self.classes[c]!r} ({n} clips)" for c, n in zip(unseen, counts))
            raise TaskError(f"{where}: labels present in test but not in train: {listed}; "
                            "a probe cannot predict a class it never saw")
        for part in ("valid", "test"):
            idx = getattr(s, part)
            try:
                score(self.metric, y[idx], np.full((len(idx), len(self.classes)), 1.0 / len(self.classes)))
            except ValueError as e:
                raise TaskError(f"{where}: {self.metric} cannot be computed on the {part} part ({e})") from e


def _file_identity(path: Path) -> tuple | str:
    try:
        st = os.stat(path)
    except OSError:
        return str(Path(path).resolve())
    return (st.st_dev, st.st_ino)


def _task_name(default: str, name: str | None) -> str:
    return re.sub(r"[^\w.+-]+", "-", name or default).strip("-") or "task"


def read_manifest(path: str | os.PathLike, *, name: str | None = None, label: str = "label",
                  group: str | None = None, kind: str | None = None, metric: str | None = None,
                  sep: str = ";", positive: str | None = None) -> Task:
    """A CSV manifest -> Task. Every row is checked (columns, labels, split values, the file exists);
    all problems are raised together, by line number."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise TaskError(f"{path}: unreadable manifest ({e})") from e
    missing = [c for c in ("path", label) if c not in header]
    groups = [c for c in ("fold", "split") if c in header] if group is None else [group]
    if missing or not groups or groups[0] not in header:
        raise TaskError(f"{path}: columns {header}: expected 'path', the label column {label!r} and a "
                        f"'fold' or 'split' column{f' ({group!r})' if group else ''}")
    if len(groups) > 1:
        raise TaskError(f"{path}: has both 'fold' and 'split' columns; choose one with group=fold or group=split")
    group = groups[0]
    folds = group != "split"
    if not rows:
        raise TaskError(f"{path}: no rows")
    multilabel = kind == "multilabel" or (kind is None and any(sep in (r.get(label) or "") for _, r in rows))
    problems, paths, labels, groups, refs = [], [], [], [], []
    for line, row in rows:
        ref = f"{path.name} line {line}"
        file, value, where = ((row.get(k) or "").strip() for k in ("path", label, group))
        labs = tuple(v.strip() for v in value.split(sep) if v.strip()) if multilabel else (value,)
        reasons = []
        if not file:
            reasons.append("empty path")
        if not value and not multilabel:  # a multi-label clip may carry no label at all
            reasons.append(f"empty label ({label!r})")
        if not where:
            reasons.append(f"empty {group}")
        elif not folds and where.lower() not in SPLIT_NAMES:
            reasons.append(f"split {where!r}: expected train, valid or test")
        audio = (path.parent / Path(file).expanduser()) if file else None
        if audio is not None and not audio.is_file():
            reasons.append(f"{audio}: file not found")
        if reasons:
            problems.append(f"line {line}: " + "; ".join(reasons))
        paths.append(audio)
        labels.append(labs)
        groups.append(where if folds else SPLIT_NAMES.get(where.lower(), where))
        refs.append(ref)
    if problems:
        raise problems_error(f"{path}: bad rows", problems)
    kind = kind or ("multilabel" if multilabel else "multiclass")
    classes = _natural(c for ls in labels for c in ls)
    if kind == "binary" and positive is not None:
        if positive not in classes:
            raise TaskError(f"{path}: positive={positive!r} is not one of the labels {classes[:10]}")
        classes = [c for c in classes if c != positive] + [positive]
    base = path.resolve().parent.name if path.stem.lower() in GENERIC_NAMES else path.stem
    default = base if label == "label" else f"{base}-{label}"
    return Task(_task_name(default, name), kind, metric or DEFAULT_METRIC[kind], classes, labels, groups,
                folds, refs, str(path), paths=paths)


def read_hear_task(folder: str | os.PathLike, *, name: str | None = None, kind: str | None = None,
                   metric: str | None = None, sample_rate: int | None = None, prefer_rate: int = 16000) -> Task:
    """A HEAR 2021 task folder (hear-preprocess output) -> Task; scene-level tasks only.

    The metric is the first of the task's `evaluation` list that specmae computes (top1_acc,
    mAP, aucroc); a 2-class task scored by aucroc is binary. Audio is read from
    <sample_rate>/<split>/, by default the `prefer_rate` folder when there is one (audio at
    another rate is resampled to the model's).
    """
    folder = Path(folder)
    try:
        meta = json.loads((folder / "task_metadata.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise TaskError(f"{folder / 'task_metadata.json'}: unreadable ({e})") from e
    if meta.get("embedding_type", "scene") != "scene":
        raise TaskError(f"{folder}: embedding_type {meta.get('embedding_type')!r}: only scene-level tasks are "
                        "supported (event tasks need timestamp embeddings and event scoring)")
    mode = meta.get("split_mode", "trainvaltest")
    folds = mode in ("new_split_kfold", "presplit_kfold")
    splits = meta.get("splits")
    if not splits:
        splits = ([f"fold{i:02d}" for i in range(int(meta.get("nfolds", 0)))] if folds
                  else ["train", "valid", "test"])
        splits = [s for s in splits if (folder / f"{s}.json").is_file()] or splits
    rates = sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())
    rate = sample_rate or (prefer_rate if prefer_rate in rates else rates[-1] if rates else None)
    if rate is None or not (folder / str(rate)).is_dir():
        raise TaskError(f"{folder}: no audio folder <sample_rate>/<split>/ (found rates {rates})")
    vocab_file = folder / "labelvocabulary.csv"
    classes = None
    if vocab_file.is_file():
        try:
            with open(vocab_file, newline="", encoding="utf-8-sig") as fh:
                rows = list(csv.DictReader(fh))
            classes = [r["label"] for r in sorted(rows, key=lambda r: int(r["idx"]))]
        except (OSError, KeyError, TypeError, ValueError) as e:
            raise TaskError(f"{vocab_file}: expected columns idx,label with integer idx ({e!r})") from e
    problems, paths, labels, groups, refs = [], [], [], [], []
    for split in splits:
        label_file = folder / f"{split}.json"
        try:
            entries = json.loads(label_file.read_text())
        except (OSError, json.JSONDecodeError) as e:
            problems.append(f"{label_file.name}: unreadable label file ({e})")
            continue
        for file, labs in entries.items():
            audio = folder / str(rate) / split / file
            if not audio.is_file():
                problems.append(f"{label_file.name}: {file}: {audio} not found")
            paths.append(audio)
            labels.append(tuple(str(v) for v in (labs if isinstance(labs, list) else [labs])))
            groups.append(split if folds else SPLIT_NAMES.get(split, split))
            refs.append(f"{label_file.name}: {file}")
    if problems:
        raise problems_error(f"{folder}: bad entries", problems)
    declared = [HEAR_METRICS[m] for m in meta.get("evaluation", []) if m in HEAR_METRICS]
    n_classes = len(classes) if classes is not None else len({c for ls in labels for c in ls})
    multilabel = meta.get("prediction_type") == "multilabel"
    if kind is None:
        kind = "multilabel" if multilabel else "binary" if n_classes == 2 and declared[:1] == ["roc_auc"] \
            else "multiclass"
    task = Task(_task_name(meta.get("task_name", folder.name), name), kind,
                metric or (declared[0] if declared else DEFAULT_METRIC[kind]), classes or _natural(
                    c for ls in labels for c in ls), labels, groups, folds, refs, str(folder), paths=paths)
    task.notes.append(f"HEAR task {meta.get('task_name')} {meta.get('version', '')}, split_mode {mode}, "
                      f"audio from {rate}/")
    return task


def load_task(spec: str | os.PathLike, prefer_rate: int = 16000, **options) -> Task:
    """A HEAR task folder (holding task_metadata.json) or a CSV manifest, with TASK_OPTIONS
    (values may be strings, as on the command line)."""
    path = Path(spec)
    unknown = sorted(set(options) - set(TASK_OPTIONS))
    if unknown:
        raise TaskError(f"task {spec}: unknown options {unknown}; allowed {list(TASK_OPTIONS)}")
    if "type" in options:
        options["kind"] = options.pop("type")
    if (path / "task_metadata.json").is_file():
        bad = sorted(set(options) & {"label", "group", "sep", "positive"})
        if bad:
            raise TaskError(f"task {spec}: options {bad} only apply to CSV manifests")
        if "sample_rate" in options:
            options["sample_rate"] = int(options["sample_rate"])
        return read_hear_task(path, prefer_rate=prefer_rate, **options)
    if path.is_file():
        options.pop("sample_rate", None)
        return read_manifest(path, **options)
    raise TaskError(f"task {spec}: not a CSV manifest nor a HEAR task folder (with task_metadata.json)")


