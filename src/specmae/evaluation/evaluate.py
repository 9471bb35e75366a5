"""Downstream evaluation: a HEAR 2021-style frozen-encoder benchmark (docs/architecture.md).

    task (CSV manifest | HEAR task folder) --every row checked, audio decoded--> clips
      --embedders: checkpoint(s), same architecture randomly initialised, log-mel statistics-->
      clip embeddings (N, D), cached per (model, clip list) --> splits or folds
      --probe grid (probe.py) per fold--> report.json, report.md, confusion_*.png, comparison.png

Tasks are scene-level: one label ('multiclass', scored by accuracy), several labels
('multilabel', mAP) or two classes ('binary', ROC-AUC of the positive class).

Task formats (CSV manifests, HEAR task folders) are read by tasks.py.

Nothing is embedded before every row of every task has been checked: missing files, files that
do not decode, labels or split values that make no sense are all reported at once, by row.

Embeddings are cached as <cache>/<key>.npz (default cache: <out>/cache; embedders.py): a second
run, or a second task on the same clips (FSDD digits and speakers), embeds nothing.

    specmae evaluate --model runs/mine --out runs/mine/eval \
        --task ../shared/data/fsdd/meta.csv label=digit --task ../shared/data/fsdd/meta.csv label=speaker \
        --task hear/tasks/esc50-v2.0.0-full
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Mapping, Sequence

import torch

from ..audio import AudioError
from ..config import GRIDS, PROBE_PRECISIONS, ProbeConfig
from ..schema import ConfigError, key_value
from ..version import __version__
from .embedders import (AudioStore, ClipEmbedder, EmbeddingCache, cache_key, embed_task, model_embedders, task_identity)
from .probe import train_probe
from .report import (cell, chance, confusion, headline, mean_std, notes, plot_comparison, plot_confusion, slug,
                     table, task_summary, write_report)
from .tasks import TASK_OPTIONS, Task, TaskError, load_task

log = logging.getLogger(__name__)

# --- the runner ----------------------------------------------------------------------------------

def _probe_config(grid: str | ProbeConfig, seed: int, **overrides) -> ProbeConfig:
    if isinstance(grid, str):
        if grid not in GRIDS:
            raise ConfigError(f"grid {grid!r}: allowed {sorted(GRIDS)}")
        grid = GRIDS[grid]
    return replace(grid, seed=seed, **{k: v for k, v in overrides.items() if v is not None})


def evaluate(tasks: Sequence[Task], models: Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike], *,
             out: str | os.PathLike | None = None, baselines: Sequence[str] = ("random", "logmel"),
             grid: str | ProbeConfig = "full", seed: int = 0, device: str | torch.device = "cpu",
             cache: str | os.PathLike | None = "auto", embed_options: dict | None = None,
             valid_fraction: float = 0.15, audio_memory: int = 2 << 30, plots: bool = True,
             embedders: Sequence[ClipEmbedder] | None = None) -> dict:
    """Score every model and baseline on every task; returns the report dict, also written to
    `out` when given (see report_figures). A single unnamed model is called 'pre-trained'.

    cache: a folder for the embeddings, 'auto' (= <out>/cache, or memory only without out) or None
    (memory only). The probe runs on `device` too; `seed` seeds the validation hold-out, the
    random-init baseline and the probes. `embedders` replaces the ones built from models and
    baselines (any ClipEmbedder: a custom model, a test double).
    """
    started = time.perf_counter()
    if not isinstance(models, Mapping):
        models = list(models)
        names = ["pre-trained"] if len(models) == 1 else _unique([Path(m).name for m in models])
        models = dict(zip(names, models))
    splits = {t.name: t.splits(seed, valid_fraction) for t in tasks}  # all task errors before any work
    if len({t.name for t in tasks}) != len(tasks):
        raise TaskError(f"task names {[t.name for t in tasks]} are not unique; name them with name=...")
    embedders = list(embedders) if embedders is not None else model_embedders(
        models, baselines, seed=seed, device=device, embed_options=embed_options)
    folder = (Path(out) / "cache" if out is not None else None) if cache == "auto" else cache
    store, cached = AudioStore(audio_memory), EmbeddingCache(folder)
    ids = {t.name: task_identity(t) for t in tasks}
    todo = [(t, e) for t in tasks for e in embedders if cached.get(cache_key(e, ids[t.name]), len(t)) is None]
    for rate in sorted({e.sample_rate for _, e in todo}):
        store.check(list({t.name: t for t, e in todo if e.sample_rate == rate}.values()), rate)
    cfg = _probe_config(grid, seed).resolved(device)
    report = {"specmae": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "seed": seed,
              "probe": cfg.to_dict(), "valid_fraction": valid_fraction,
              "models": {e.name: e.identity for e in embedders}, "tasks": {}}
    for task in tasks:
        y = task.targets()
        entry = {**task_summary(task), "notes": notes(task, splits[task.name]),
                 "folds": [{"name": s.name, "train": len(s.train), "valid": len(s.valid), "test": len(s.test),
                            "note": s.note} for s in splits[task.name]], "results": {},
                 "chance": chance(task, splits[task.name])}
        for e in embedders:
            key = cache_key(e, ids[task.name])
            t0 = time.perf_counter()
            emb = cached.get(key, len(task))
            hit = emb is not None
            if not hit:
                log.info("embedding %s with %s (%d clips)", task.name, e.name, len(task))
                emb = embed_task(task, e, store)
                cached.put(key, emb, {"task": task.name, "model": e.name})
            t1 = time.perf_counter()
            folds = []
            for s in splits[task.name]:
                r = train_probe(emb[s.train], y[s.train], emb[s.valid], y[s.valid], emb[s.test], y[s.test],
                                kind=task.kind, metric=task.metric, n_classes=len(task.classes), config=cfg,
                                device=device)
                fold = {"name": s.name, **r.to_dict()}
                if task.kind != "multilabel":
                    fold["confusion"] = confusion(y[s.test], r.test_probs.argmax(1), len(task.classes)).tolist()
                folds.append(fold)
                log.info("%s / %s / %s: %s %.4f (valid %.4f, %s lr %g)", task.name, e.name, s.name, task.metric,
                         r.test_score, r.valid_score, r.chosen.head, r.chosen.lr)
            entry["results"][e.name] = {**mean_std([f["test"] for f in folds]), "folds": folds,
                                        "dim": int(emb.shape[1]), "embed_s": round(t1 - t0, 3), "cached": hit,
                                        "probe_s": round(time.perf_counter() - t1, 3)}
        report["tasks"][task.name] = entry
    report["timing"] = {key: {e.name: round(sum(t["results"][e.name][key] for t in report["tasks"].values()), 3)
                              for e in embedders} for key in ("embed_s", "probe_s")}
    report["timing"]["total_s"] = round(time.perf_counter() - started, 3)
    if out is not None:
        write_report(out, report, markdown(report), report_figures(report) if plots else ())
    return report


def markdown(report: dict) -> str:
    """Task x model table of test scores x 100: mean ± standard deviation over folds; the protocol,
    the tasks with their notes and the probes chosen, the time taken."""
    models = list(report["models"])
    lines = ["# specmae evaluation", "",
             "Test scores x 100, mean ± standard deviation over folds (one number: a single train/test split).", "",
             *table(["task", "metric", "folds", *models, "chance"],
                    [[name, t["metric"], len(t["folds"]), *(cell(t["results"][m]) for m in models),
                      f"{100 * t['chance']:.1f}"] for name, t in report["tasks"].items()])]
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
    lines += ["", "## Time", "",
              *table(["model", "embedding s", "probe s"],
                     [[m, f"{timing['embed_s'][m]:.1f}", f"{timing['probe_s'][m]:.1f}"] for m in models]),
              "", f"Total {timing['total_s']:.1f} s (embedding 0 = read from the cache).", ""]
    return "\n".join(lines)


def report_figures(report: dict) -> list:
    """confusion_<task>_<model>.png per single-label task (summed over folds), comparison.png."""
    figures = [(f"confusion_{slug(name)}_{slug(m)}.png",
                partial(plot_confusion, [f["confusion"] for f in r["folds"]], t["classes"],
                        f"{name} - {m}: {t['metric']} {cell(r)}"))
               for name, t in report["tasks"].items() if t["type"] != "multilabel" for m, r in t["results"].items()]
    return figures + [("comparison.png", partial(plot_comparison, report))]


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


def builtin_comparison(checkpoint: str | os.PathLike, n_clips: int = 1000, seed: int = 10_000, *,
                       grid: str | ProbeConfig = "fast", out: str | os.PathLike | None = None) -> dict:
    """Probe accuracy on a held-out labelled built-in corpus (a seed never trained on) for the
    pre-trained encoder, the same architecture randomly initialised and log-mel statistics,
    through the evaluation runner, plus 'chance' (the share of the most
    frequent test class).

    The clips' last 30 % are the test split; the runner carves a stratified validation part out
    of the rest. `grid` defaults to the reduced 'fast' grid (linear and 1-hidden-layer heads, two
    learning rates, at most 100 epochs) so that the demo stays within its time budget; `out`
    also writes the full report there. Returns {model name: test accuracy, 'chance': ...}.
    """
    from ..audio import synth
    from ..checkpoint import read

    config = read(checkpoint).config
    waves, labels = synth.make_corpus(n_clips, seed=seed, sample_rate=config.frontend.sample_rate)
    # Cut to the encoder's width (T frames = 1 + samples // hop): one chunk per clip, no padding.
    waves = waves[:, :(config.model.encoder.n_frames - 1) * config.frontend.hop_length]
    split = int(0.7 * n_clips)
    task = Task.from_arrays("builtin", list(waves), [synth.CLASSES[i] for i in labels],
                                     ["train" if i < split else "test" for i in range(n_clips)],
                                     sample_rate=config.frontend.sample_rate, classes=synth.CLASSES)
    report = evaluate([task], [checkpoint], grid=grid, seed=seed, out=out, cache=None)
    results = {name: r["mean"] for name, r in report["tasks"]["builtin"]["results"].items()}
    results["chance"] = report["tasks"]["builtin"]["chance"]
    return results


# --- command line ----------------------------------------------------------------------------------

def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `specmae evaluate`."""
    parser.add_argument("--model", action="append", required=True, metavar="[NAME=]CKPT",
                        help="checkpoint, run folder or official .pth (repeatable; a single one is called "
                             "'pre-trained')")
    parser.add_argument("--task", action="append", nargs="+", required=True, metavar=("PATH", "KEY=VALUE"),
                        help="CSV manifest or HEAR task folder, then options "
                             f"({', '.join(TASK_OPTIONS)}), e.g. --task fsdd/meta.csv label=digit (repeatable)")
    parser.add_argument("--out", required=True, help="output folder (report.json, report.md, PNGs)")
    parser.add_argument("--cache", help="embedding cache folder (default: <out>/cache)")
    parser.add_argument("--baselines", default="random,logmel",
                        help="comma-separated from random, logmel; 'none' for none (default: both)")
    parser.add_argument("--grid", default="full", choices=sorted(GRIDS), help="probe grid (default: full = "
                        "linear, 1 and 2 hidden layers x 4 learning rates)")
    parser.add_argument("--max-epochs", type=int, help="override the grid's maximum epochs")
    parser.add_argument("--patience", type=int, help="override the early-stopping patience (epochs)")
    parser.add_argument("--probe-precision", choices=PROBE_PRECISIONS,
                        help="probe matrix products (default auto: bf16 where it measures faster than fp32, else fp32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="device for embedding and probes: cpu, cuda, cuda:1")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="encoder precision")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder (see specmae embed)")
    parser.add_argument("--layers", help="encoder layers, comma-separated (default: the last)")
    parser.add_argument("--layer-mode", choices=("mean", "concat"))
    parser.add_argument("--valid-fraction", type=float, default=0.15,
                        help="share of train held out for validation when a task has no valid split")
    parser.add_argument("--no-plots", action="store_true")


def parse_task_spec(tokens: Sequence[str]) -> tuple[str, dict]:
    """['path', 'key=value', ...] -> (path, options)."""
    path, options = tokens[0], {}
    for item in tokens[1:]:
        key, value = key_value(item, f"--task {' '.join(tokens)}:", TASK_OPTIONS)
        options[key] = value
    return path, options


def _model_rate(path: str) -> int:
    from .. import checkpoint as ckpt
    try:
        return ckpt.read(path).config.frontend.sample_rate
    except ckpt.CheckpointError:
        return 16000


def run_evaluate_command(args: argparse.Namespace) -> None:
    """`specmae evaluate`: parse, run, write the report, print the table and where it went."""
    from ..checkpoint import CheckpointError

    named = []
    for item in args.model:
        name, sep, path = item.partition("=")
        name, path = (name, path) if sep and not Path(item).exists() else ("", item)
        named.append((name or ("pre-trained" if len(args.model) == 1 else Path(path).name), path))
    models = dict(zip(_unique([n for n, _ in named]), [p for _, p in named]))
    options = {k: v for k, v in {"precision": args.precision, "layer_mode": args.layer_mode,
                                 "layers": [int(l) for l in args.layers.split(",")] if args.layers else None,
                                 "compile": args.compile or None}.items() if v is not None}
    baselines = [] if args.baselines.strip() == "none" else [b.strip() for b in args.baselines.split(",") if b.strip()]
    try:
        rate = _model_rate(next(iter(models.values())))
        tasks = []
        for tokens in args.task:
            path, task_options = parse_task_spec(tokens)
            tasks.append(load_task(path, prefer_rate=rate, **task_options))
        grid = _probe_config(args.grid, args.seed, max_epochs=args.max_epochs, patience=args.patience,
                             precision=args.probe_precision)
        report = evaluate(tasks, models, out=args.out, baselines=baselines, grid=grid, seed=args.seed,
                          device=args.device, cache=args.cache or "auto", embed_options=options,
                          valid_fraction=args.valid_fraction, plots=not args.no_plots)
    except (TaskError, CheckpointError, AudioError, ValueError) as e:
        raise SystemExit(f"specmae evaluate: {e}") from e
    print(headline(markdown(report)))
    print(f"\nreport: {Path(args.out) / 'report.md'} (+ report.json, PNGs)")

