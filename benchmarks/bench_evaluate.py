"""Wall time of a full downstream evaluation: FSDD spoken digit and speaker (issue 5, item 7).

    python benchmarks/bench_evaluate.py                        # random-init ViT-B 80x208p16x16, CPU
    python benchmarks/bench_evaluate.py --model runs/mine      # a checkpoint (or run folder, .pth)
    python benchmarks/bench_evaluate.py --device cuda
    python benchmarks/bench_evaluate.py --probe-precision bf16 --baselines random,logmel
    python benchmarks/bench_evaluate.py --smoke                # tiny model, 150 clips: checks the script

Tasks: ../shared/data/fsdd/meta.csv with label=digit (10 classes) and label=speaker (6), on the
dataset's official split (takes 0-4 test, 5-49 train; the runner holds out a stratified 15 % of
train for validation). Protocol: `specmae evaluate` defaults (grid 'full': linear, 1 and 2 hidden
layers x 4 learning rates, patience 20, at most 500 epochs). Without --model, a randomly
initialised ViT-B is evaluated: the time does not depend on the weights (the early-stopping
epochs do, a little).

Both tasks use the same clips, so each model embeds FSDD once (the second task reads the
in-memory cache; nothing is read from disk caches): embedding time is per model, probe time per
model and task. Prints a Markdown table, the machine and its load.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average, machine  # noqa: E402

from specmae.audio import FrontendConfig  # noqa: E402
from specmae.checkpoint import save_checkpoint  # noqa: E402
from specmae.evaluation.evaluate import evaluate  # noqa: E402
from specmae.evaluation.tasks import read_manifest  # noqa: E402
from specmae.model.mae import MaskedAutoencoder  # noqa: E402
from specmae.model.presets import model_config  # noqa: E402
from specmae.config import GRIDS, PROBE_PRECISIONS  # noqa: E402

FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="checkpoint to evaluate (default: a random-init ViT-B 80x208p16x16)")
    p.add_argument("--fsdd", type=Path, default=FSDD, help="FSDD folder with meta.csv")
    p.add_argument("--baselines", default="none", help="comma-separated from random, logmel, or none")
    p.add_argument("--grid", default="full", choices=sorted(GRIDS))
    p.add_argument("--probe-precision", default="auto", choices=PROBE_PRECISIONS)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"), help="encoder precision")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit", type=int, help="evaluate every k-th clip so that about LIMIT remain")
    p.add_argument("--out", type=Path, help="report folder (default: a temporary folder)")
    p.add_argument("--smoke", action="store_true", help="tiny model, 150 clips, grid 'fast'")
    args = p.parse_args(argv)
    if args.smoke:
        args.limit, args.grid = args.limit or 150, "fast"
    return args


def random_checkpoint(folder: Path, smoke: bool) -> Path:
    """A randomly initialised checkpoint: ViT-B 80x208p16x16, or a tiny one for --smoke."""
    cfg = (model_config("80x208p16x16", "tiny", dim=48, depth=2, heads=3, decoder_dim=32, decoder_depth=1,
                        decoder_heads=4) if smoke else model_config("80x208p16x16", "base"))
    torch.manual_seed(1234)  # not the random-init baseline's seed (0), which would give the same weights
    return save_checkpoint(folder / "random-vit", MaskedAutoencoder(cfg).state_dict(),
                           dict(model=cfg.to_dict(), frontend=FrontendConfig().to_dict(), norm_stats=[-7.1, 4.2]))


def manifest(fsdd: Path, folder: Path, limit: int | None) -> Path:
    """FSDD's meta.csv with absolute paths, every k-th row kept when limited."""
    with open(fsdd / "meta.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    step = max(1, len(rows) // limit) if limit else 1
    out = folder / "fsdd.csv"
    with open(out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows[::step]:
            writer.writerow({**row, "path": str((fsdd / row["path"]).resolve())})
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if not (args.fsdd / "meta.csv").is_file():
        raise SystemExit(f"{args.fsdd}/meta.csv not found: pass --fsdd")
    work = Path(tempfile.mkdtemp(prefix="bench_evaluate."))
    out = args.out or work / "report"
    model = args.model or random_checkpoint(work, args.smoke)
    meta = manifest(args.fsdd, work, args.limit)
    tasks = [read_manifest(meta, label="digit", name="fsdd-digit"), read_manifest(meta, label="speaker",
                                                                                  name="fsdd-speaker")]
    baselines = [] if args.baselines == "none" else args.baselines.split(",")
    grid = replace(GRIDS[args.grid], precision=args.probe_precision).resolved(args.device)
    load = load_average()
    started = time.perf_counter()
    report = evaluate(tasks, {"model": model}, out=out, baselines=baselines, grid=grid, device=args.device,
                      cache=None, embed_options={"precision": args.precision})
    wall = time.perf_counter() - started
    n = len(tasks[0])
    print(f"machine: {machine()}; load average before {load:.2f}, after {load_average():.2f}")
    what = model if args.model else "random-init " + ("tiny (smoke)" if args.smoke else "ViT-B 80x208p16x16")
    print(f"model: {what}; {n} clips; grid {args.grid}, probe {grid.precision}, encoder {args.precision}, "
          f"device {args.device}\n")
    print("| model | embed s | probe s digit | probe s speaker | probe / embed | digit acc | speaker acc |")
    print("|---|---|---|---|---|---|---|")
    for name in report["models"]:
        d, s = (report["tasks"][t]["results"][name] for t in ("fsdd-digit", "fsdd-speaker"))
        embed = d["embed_s"] + s["embed_s"]
        probe = d["probe_s"] + s["probe_s"]
        print(f"| {name} | {embed:.1f} | {d['probe_s']:.1f} | {s['probe_s']:.1f} | {probe / max(embed, 1e-9):.2f} | "
              f"{100 * d['mean']:.1f} | {100 * s['mean']:.1f} |")
    print(f"\nwall {wall:.1f} s (report: {out / 'report.md'})")
    epochs = {t: {m: [(g["head"], g["lr"], g["epochs"]) for g in r["folds"][0]["grid"]]
                  for m, r in report["tasks"][t]["results"].items()} for t in report["tasks"]}
    print("epochs per config:", json.dumps(epochs))


if __name__ == "__main__":
    main()
