"""Fine-tuned vs frozen probe on tasks of different sizes (issue 21), before and after.

    python benchmarks/bench_finetune_sizes.py --checkpoint runs/demo
    python benchmarks/bench_finetune_sizes.py --checkpoint runs/demo --tasks digit --fractions 0.1,1
    python benchmarks/bench_finetune_sizes.py --smoke      # tiny random model, 60 clips: checks the script
    python benchmarks/bench_finetune_sizes.py --checkpoint runs/demo --tasks digit --fractions 0.1 --recipes after \
        --set model.pool_padding=true     # an ablation: one field changed over the recipes

Tasks: ../shared/data/fsdd/meta.csv with label=digit (10 classes) and label=speaker (6), the
training rows subsampled to a share (stratified by the label, seeded; the test rows all kept),
and `builtin`: 400 clips of the built-in synthetic corpus (12 classes, every fifth one test).
Recipes: `before` is the recipe that was the default until issue 21, MaskSpec's
(`--config maskspec-finetune`, the fine-tuned model always used); `after` is today's default
(scale auto, LP-FT, prefer best). Each run reports its fine-tuned test accuracy, its probe
classifier (the probe grid's winning head on the frozen encoder), and the `after` run the frozen probe
of `specmae evaluate` (grid 'full') on the same folds. Prints a Markdown table, the machine and
its load; writes every report under --out.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import load_average, machine  # noqa: E402

from specmae.audio import synth  # noqa: E402
from specmae.config import FinetuneConfig, compose_cli, read_config_file  # noqa: E402
from specmae.evaluation.tasks import Task, load_task  # noqa: E402
from specmae.training.finetune_run import finetune  # noqa: E402

FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd"


def recipe(name: str, smoke: bool, sets: list[str] = ()) -> FinetuneConfig:
    """The named recipe with `--set KEY=VALUE` items on top (an ablation of one field)."""
    if name == "before":
        layers = [read_config_file("maskspec-finetune"), dict(prefer="finetuned", probe="none")]
    else:
        layers = []
    cfg = compose_cli(layers, {}, list(sets), FinetuneConfig)
    cfg.train.workers = 0
    if smoke:
        cfg.train.epochs, cfg.train.batch_size, cfg.min_steps = 2, 16, 10
        cfg.probe = "none" if name == "before" else "fast"
    return cfg


def fsdd_subset(fsdd: Path, label: str, fraction: float, out: Path, seed: int = 0) -> Task:
    """A manifest of `fraction` of FSDD's training rows (stratified by `label`) and all test rows."""
    rows = list(csv.DictReader(open(fsdd / "meta.csv")))
    rng = np.random.default_rng(seed)
    keep = [r for r in rows if r["split"] == "test"]
    for value in sorted({r[label] for r in rows}):
        train = [r for r in rows if r["split"] == "train" and r[label] == value]
        picked = rng.choice(len(train), size=max(2, round(fraction * len(train))), replace=False)
        keep += [train[i] for i in sorted(picked)]
    path = out / f"fsdd-{label}-{fraction:g}.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", label, "split"])
        w.writeheader()
        for r in keep:
            w.writerow({"path": str(fsdd / r["path"]), label: r[label], "split": r["split"]})
    return load_task(path, prefer_rate=16000, label=label, name=f"fsdd-{label}-{fraction:g}")


def builtin_task(n: int) -> Task:
    waves, labels = synth.make_corpus(n, seed=3)
    return Task.from_arrays("builtin", list(waves), [synth.CLASSES[i] for i in labels],
                            ["test" if i % 5 == 4 else "train" for i in range(n)], sample_rate=16000,
                            classes=synth.CLASSES)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="runs/demo")
    p.add_argument("--fsdd", type=Path, default=FSDD)
    p.add_argument("--tasks", default="digit,speaker,builtin")
    p.add_argument("--fractions", default="0.1,0.3,1")
    p.add_argument("--recipes", default="before,after")
    p.add_argument("--out", type=Path, help="keep the runs here (default: a temporary folder)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a fine-tuning config field over both recipes, e.g. model.pool_padding=true")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-ft-sizes-"))
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint
    if args.smoke:
        sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
        from test_finetune import random_checkpoint
        checkpoint = random_checkpoint(out / "random")
    tasks = []
    for name in args.tasks.split(","):
        if name == "builtin":
            tasks.append(builtin_task(60 if args.smoke else 400))
        else:
            for fraction in map(float, args.fractions.split(",")):
                tasks.append(fsdd_subset(args.fsdd, name, fraction, out))
    rows = []
    print(f"machine: {machine()}, load {load_average():.1f}", flush=True)
    for task in tasks:
        for name in args.recipes.split(","):
            started = time.perf_counter()
            report = finetune(recipe(name, args.smoke, args.set), checkpoint, task, out / task.name / name, progress=False)
            seconds = time.perf_counter() - started
            c, fold = report["config"]["train"], report["folds"][0]
            probe = report["frozen_probe"]
            row = dict(task=task.name, recipe=name, train=fold["train"], batch=c["batch_size"], epochs=c["epochs"],
                       steps=c["epochs"] * (fold["train"] // c["batch_size"]), fine_tuned=report["fine_tuned"]["mean"],
                       probe_classifier=(report.get("probe_classifier") or {}).get("mean"),
                       probe_head=fold.get("probe_head"), used=report["used"]["mean"],
                       kept=fold["kept"], frozen_probe=probe["mean"] if probe else None, seconds=round(seconds))
            rows.append(row)
            print(json.dumps(row), flush=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    print("\n| task | recipe | train clips | batch x steps | fine-tuned | probe classifier | used | frozen probe | "
          "wall time |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['recipe']} | {r['train']} | {r['batch']} x {r['steps']} | {pct(r['fine_tuned'])} | "
              f"{pct(r['probe_classifier'])} ({r['probe_head']}) | {pct(r['used'])} ({r['kept']}) | {pct(r['frozen_probe'])} | "
              f"{r['seconds'] // 60} min {r['seconds'] % 60} s |")
    print(f"\nmachine: {machine()}, load {load_average():.1f}; runs in {out}")


if __name__ == "__main__":
    main()
