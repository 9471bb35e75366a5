"""The reports of `specmae evaluate` and `specmae finetune`, built by each command (evaluate.py,
training/finetune_run.py) from these parts: the numbers over folds, the fold notes, Markdown
tables, confusion matrices and curves; write_report writes report.json, report.md and the
figures, each atomically."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from ..files import atomic_write_text, pyplot, save_png
from .metrics import chance_score
from .tasks import Split, Task

log = logging.getLogger(__name__)


# --- numbers -------------------------------------------------------------------------------------

def mean_std(scores: Sequence[float]) -> dict:
    """{'mean', 'std'} over folds; std (ddof 1) is None for a single split."""
    return dict(mean=float(np.mean(scores)), std=float(np.std(scores, ddof=1)) if len(scores) > 1 else None)


def chance(task: Task, splits: Sequence[Split]) -> float:
    """The chance score of the task's metric, averaged over the test parts."""
    y = task.targets()
    return float(np.mean([chance_score(task.metric, y[s.test], len(task.classes)) for s in splits]))


def confusion(true: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """(C, C) counts, rows = true class, columns = predicted class."""
    return np.bincount(np.asarray(true) * n + np.asarray(pred), minlength=n * n).reshape(n, n)


def task_summary(task: Task) -> dict:
    return dict(name=task.name, source=task.source, type=task.kind, metric=task.metric, classes=list(task.classes),
                clips=len(task))


def notes(task: Task, splits: Sequence[Split]) -> list[str]:
    """What a reader of the scores needs to know: the task's own notes, how each fold validates
    (HEAR's rotation said once, not per fold) and the positive class of a binary task."""
    folds = sorted({s.note for s in splits})
    if len(folds) > 1 and all(n.startswith("validation: next fold") for n in folds):
        folds = [f"{len(folds)} folds: each is the test part once, the next one in sorted order validates "
                 "and the others train (HEAR's convention)"]
    binary = [f"positive class (ROC-AUC): {task.classes[1]!r}"] if task.kind == "binary" else []
    return task.notes + folds + binary


# --- report.md -----------------------------------------------------------------------------------

def cell(entry: dict | None) -> str:
    """A {'mean', 'std'} score x 100: '81.2 ± 3.4', '81.2' for a single split, '-' for none."""
    if entry is None:
        return "-"
    return f"{100 * entry['mean']:.1f}" + (f" ± {100 * entry['std']:.1f}" if entry["std"] is not None else "")


def table(header: Sequence[str], rows: Iterable[Sequence]) -> list[str]:
    """The lines of a Markdown table."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(map(str, row)) + " |" for row in rows)]


def headline(markdown: str) -> str:
    """A report.md up to its first section: what a command prints."""
    return markdown.split("\n## ", 1)[0].rstrip()


# --- figures -------------------------------------------------------------------------------------

def plot_confusion(folds: Sequence, classes: Sequence[str], title: str, path: str | os.PathLike) -> Path:
    """Test confusion counts (C, C) of every fold, summed and row-normalised (true class per row),
    counts written in the cells."""
    plt = pyplot()
    matrix = np.sum(folds, axis=0)
    n = len(classes)
    rate = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    size = min(4 + 0.45 * n, 16)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(rate, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(n)
    ax.set_xticks(ticks, [str(c) for c in classes], rotation=90 if max(map(len, map(str, classes))) > 3 else 0)
    ax.set_yticks(ticks, [str(c) for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8 if n <= 15 else 6,
                            color="white" if rate[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    fig.tight_layout()
    return save_png(fig, Path(path), tight=False)


def plot_comparison(report: dict, path: str | os.PathLike) -> Path:
    """Grouped bars of an evaluation report: test score per task and model, error bars = std over
    folds, chance dashed."""
    plt = pyplot()
    tasks, models = list(report["tasks"]), list(report["models"])
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 + 0.6 * len(tasks) * len(models)), 4.2))
    colours = plt.get_cmap("tab10").colors
    for j, m in enumerate(models):
        res = [report["tasks"][t]["results"][m] for t in tasks]
        x = np.arange(len(tasks)) + (j - (len(models) - 1) / 2) * width
        spread = [100 * (r["std"] or 0) for r in res]
        ax.bar(x, [100 * r["mean"] for r in res], width, label=m, color=colours[j % 10],
               yerr=spread if any(spread) else None, capsize=3)
        for xi, r in zip(x, res):
            ax.text(xi, 100 * (r["mean"] + (r["std"] or 0)) + 1, f"{100 * r['mean']:.1f}", ha="center",
                    va="bottom", fontsize=7)
    for i, t in enumerate(tasks):
        ax.hlines(100 * report["tasks"][t]["chance"], i - 0.45, i + 0.45, colors="k", linestyles="dashed",
                  linewidth=1, label="chance" if i == 0 else None)
    ax.set_xticks(np.arange(len(tasks)), [f"{t}\n({report['tasks'][t]['metric']})" for t in tasks])
    ax.set_ylabel("test score x 100")
    ax.set_ylim(0, 108)
    ax.set_title("frozen-encoder probe: mean over folds (bars: std)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return save_png(fig, Path(path), tight=False)


def plot_curves(logs: Mapping[str, Sequence[dict]], metric: str, path: str | os.PathLike) -> Path:
    """Training loss (left) and validation `metric` per epoch (right), one line per fold, from
    each fold's log records {fold name: [log.jsonl record, ...]} (training/logs.py)."""
    plt = pyplot()
    fig, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, records in logs.items():
        steps = [r for r in records if "loss" in r and "event" not in r]
        valid = [r for r in records if r.get("event") == "validation"]
        loss_ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=1, label=name)
        val_ax.plot([r["epoch"] + 1 for r in valid], [100 * r[metric] for r in valid], marker=".", label=name)
    loss_ax.set(xlabel="optimizer step", ylabel="training loss", title="training loss")
    val_ax.set(xlabel="epoch", ylabel=f"{metric} x 100", title=f"validation {metric}")
    for ax in (loss_ax, val_ax):
        ax.grid(alpha=0.3)
    if len(logs) > 1:
        val_ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return save_png(fig, Path(path))


# --- the writer ----------------------------------------------------------------------------------

def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", name).strip("-")


def write_report(out: str | os.PathLike, report: dict, markdown: str,
                 figures: Iterable[tuple[str, Callable[[Path], Path]]] = ()) -> list[Path]:
    """report.json (every number), report.md and each (file name, plot(path)) figure, all written
    atomically into `out`; -> the paths written. Without matplotlib the figures are left out,
    with a warning."""
    out = Path(out)
    written = [atomic_write_text(out / "report.json", json.dumps(report, indent=1)),
               atomic_write_text(out / "report.md", markdown)]
    try:
        written += [plot(out / name) for name, plot in figures]
    except ImportError:
        log.warning("matplotlib is not installed: %s has no figures (pip install 'specmae[plots]')", out)
    return written
