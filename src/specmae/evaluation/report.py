"""Evaluation reports: Markdown table, confusion matrices and the model comparison chart."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from ..files import atomic_write_text, save_png

log = logging.getLogger(__name__)


# --- report --------------------------------------------------------------------------------------

def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", name).strip("-")


def _cell(r: dict, n_folds: int) -> str:
    if r["std"] is None:
        return f"{100 * r['mean']:.1f}"
    return f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f}"


def markdown(report: dict) -> str:
    """Task x model table of test scores x 100: mean ± standard deviation over folds."""
    models = list(report["models"])
    lines = ["# specmae evaluation", "",
             "Test scores x 100, mean ± standard deviation over folds (one number: a single train/test split).", "",
             "| task | metric | folds | " + " | ".join(models) + " | chance |",
             "|---|---|---|" + "---|" * (len(models) + 1)]
    for name, t in report["tasks"].items():
        n = len(t["folds"])
        cells = [_cell(t["results"][m], n) for m in models]
        lines.append(f"| {name} | {t['metric']} | {n} | " + " | ".join(cells) + f" | {100 * t['chance']:.1f} |")
    p = report["probe"]
    lines += ["", "## Protocol", "",
              "- Frozen clip embeddings (time mean of frame features), standardised on each training part.",
              f"- Probe grid: heads {', '.join(p['heads'])} x learning rates {', '.join(f'{lr:g}' for lr in p['lrs'])} "
              f"(hidden {p['hidden']}, BatchNorm, dropout {p['dropout']}, ReLU; Adam, batch {p['batch_size']}); "
              f"early stopping on the validation metric, patience {p['patience']} epochs, at most "
              f"{p['max_epochs']}; best epoch restored; config chosen on validation; seed {p['seed']}.",
              "- Baselines: 'random init' = the same architecture randomly initialised; 'log-mel stats' = "
              "per-mel-bin mean and standard deviation of the log-mel over time.", "", "## Tasks", ""]
    for name, t in report["tasks"].items():
        parts = ", ".join(f"{f['name']}: {f['train']}/{f['valid']}/{f['test']}" for f in t["folds"])
        lines.append(f"- **{name}** ({t['source']}): {t['type']}, {len(t['classes'])} classes, {t['clips']} clips; "
                     f"train/valid/test per fold: {parts}.")
        lines += [f"  - {note}" for note in t["notes"]]
        chosen = "; ".join(f"{m}: " + ", ".join(f"{f['chosen']['head']} lr {f['chosen']['lr']:g} "
                                                 f"ep {f['chosen']['best_epoch']}" for f in r["folds"])
                           for m, r in t["results"].items())
        lines.append(f"  - chosen probes: {chosen}")
    timing = report["timing"]
    lines += ["", "## Time", "", "| model | embedding s | probe s |", "|---|---|---|"]
    lines += [f"| {m} | {timing['embed_s'][m]:.1f} | {timing['probe_s'][m]:.1f} |" for m in models]
    lines += ["", f"Total {timing['total_s']:.1f} s (embedding 0 = read from the cache).", ""]
    return "\n".join(lines)


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], title: str, path: str | os.PathLike) -> Path:
    """Row-normalised confusion matrix (true class per row), counts written in the cells."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
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
    """Grouped bars: test score per task and model, error bars = std over folds, chance dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def write_report(report: dict, out: str | os.PathLike, plots: bool = True) -> list[Path]:
    """report.json (every number), report.md, confusion_<task>_<model>.png per single-label task
    (summed over folds), comparison.png; all written atomically into `out`."""
    out = Path(out)
    atomic_write_text(out / "report.json", json.dumps(report, indent=1))
    atomic_write_text(out / "report.md", markdown(report))
    written = [out / "report.json", out / "report.md"]
    if plots:
        for name, t in report["tasks"].items():
            if t["type"] == "multilabel":
                continue
            for m, r in t["results"].items():
                matrix = np.sum([f["confusion"] for f in r["folds"]], axis=0)
                title = f"{name} - {m}: {t['metric']} {100 * r['mean']:.1f}"
                path = out / f"confusion_{_slug(name)}_{_slug(m)}.png"
                written.append(plot_confusion(matrix, t["classes"], title, path))
        written.append(plot_comparison(report, out / "comparison.png"))
    return written


