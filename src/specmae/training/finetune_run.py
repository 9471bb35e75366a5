"""A fine-tuning run: every fold of a task, the frozen-probe comparison, the report (docs/finetuning.md).

    specmae finetune CKPT TASK --out RUN

    RUN/config.json             the fine-tuning config ('auto' choices made), the source, the task
    RUN/<fold>/                 one run folder per fold (`model` for a single split, `fold-<name>`
                                for k-fold): checkpoints/ with `best` kept beside the rotation,
                                log.jsonl, tb/, result.json; its `latest` names checkpoints/best
    RUN/latest                  -> the kept checkpoint of the fold with the best validation score,
                                so that `specmae.load(RUN)` and `specmae predict RUN` take it
    RUN/report.json, report.md  the test metric per fold, mean and std, beside the frozen probe's
    RUN/confusion.png           test confusion matrix summed over folds (single-label tasks)
    RUN/curves.png              training loss (every train.log_every steps), validation metric per
                                epoch, every fold
    RUN/probe/                  the frozen-probe evaluation of the same checkpoint on the same folds

Nothing is written before the checkpoint, the task (every clip decodes), the config and their
fit have been checked. With `resume`, finished folds are read back and the others continue
from their last checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy as np

from ..checkpoint import load
from ..config import FinetuneConfig
from ..evaluation.embedders import AudioStore
from ..evaluation.metrics import chance_score
from ..evaluation.report import plot_confusion
from ..evaluation.tasks import Split, Task
from ..files import atomic_write_text, save_png
from ..schema import ConfigError
from ..version import __version__
from .engine import setup, split_batch
from .finetune import FoldResult, FoldTrainer, prepare, read_result

log = logging.getLogger(__name__)

PROBE_NAME = "frozen probe"


def fold_folder(task: Task, split: Split) -> str:
    return f"fold-{split.name}" if task.folds else "model"


def finetune(cfg: FinetuneConfig, source: str | os.PathLike, task: Task, out: str | os.PathLike, *,
             resume: bool = False, progress: bool = True, max_steps: int | None = None) -> dict | None:
    """Fine-tune checkpoint `source` on every fold of `task` into `out`; -> the report (rank 0),
    or None on other ranks and when `max_steps` (optimizer steps of the first unfinished fold,
    the schedule unchanged: how tests interrupt a run) stopped it early."""
    cfg.validate()
    env = setup(cfg.train)
    ck = load(source)  # the encoder's weights are copied into each fold's classifier
    cfg = prepare(cfg, ck, task)
    splits = task.splits(cfg.train.seed, cfg.valid_fraction)
    split_batch(cfg.train, env.world)
    smallest = min(splits, key=lambda s: len(s.train))
    if len(smallest.train) < cfg.train.batch_size:
        raise ConfigError(f"train.batch_size: {cfg.train.batch_size} is more than the {len(smallest.train)} "
                          f"training clips of {task.name} ({fold_folder(task, smallest)}); lower it")
    rate = ck.config.frontend.sample_rate
    store = AudioStore()
    store.check([task], rate)  # every clip decodes, or one error listing the bad ones
    out = Path(out)
    run_config = dict(source=str(Path(source).resolve()), task=task_summary(task), finetune=cfg.to_dict())
    if (out / "config.json").is_file():
        if not resume:
            raise ConfigError(f"{out}: already holds a fine-tuning run; resume it (--resume) or choose another --out")
        if json.loads((out / "config.json").read_text()) != run_config:
            raise ConfigError(f"{out}: started with another checkpoint, task or config ({out / 'config.json'}); "
                              "resume with the same ones, or choose another --out")
    if env.main:
        atomic_write_text(out / "config.json", json.dumps(run_config, indent=1))
    clips = partial(store.clips, task, rate)
    results = []
    for split in splits:
        run_dir = out / fold_folder(task, split)
        result = read_result(run_dir) if resume else None
        if result is None:
            log.info("fine-tuning %s on %s: %d / %d / %d clips", ck.path, run_dir.name, len(split.train),
                     len(split.valid), len(split.test))
            result = FoldTrainer(cfg, ck, task, split, clips, run_dir, env, resume, progress).run(max_steps)
            if result is None:
                return None
        results.append(result)
    if not env.main:
        return None
    probe = None
    if cfg.probe != "none":
        from ..evaluation.evaluate import evaluate
        probed = evaluate([task], {PROBE_NAME: source}, out=out / "probe", baselines=(), grid=cfg.probe,
                          seed=cfg.train.seed, device=env.device, valid_fraction=cfg.valid_fraction)
        probe = probed["tasks"][task.name]["results"][PROBE_NAME]
    report = build_report(cfg, str(source), task, splits, results, probe)
    write_report(report, out)
    best = max(results, key=lambda r: r.valid)
    atomic_write_text(out / "latest", f"{Path(best.run).name}/checkpoints/best\n")
    return report


def task_summary(task: Task) -> dict:
    return dict(name=task.name, source=task.source, type=task.kind, metric=task.metric, classes=list(task.classes),
                clips=len(task))


def _mean_std(values: list[float]) -> dict:
    return dict(mean=float(np.mean(values)), std=float(np.std(values, ddof=1)) if len(values) > 1 else None)


def build_report(cfg: FinetuneConfig, source: str, task: Task, splits: list[Split], results: list[FoldResult],
                 probe: dict | None) -> dict:
    """Every number of the run: per fold and over folds, fine-tuned and frozen probe."""
    y = task.targets()
    folds = []
    for i, r in enumerate(results):
        fold = asdict(r)
        fold["probe"] = probe["folds"][i]["test"] if probe else None
        folds.append(fold)
    notes = sorted({s.note for s in splits})
    if len(notes) > 1 and all(n.startswith("validation: next fold") for n in notes):
        notes = [f"{len(notes)} folds: each is the test part once, the next one in sorted order validates "
                 "and the others train (HEAR's convention)"]
    return {"specmae": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "source": source,
            "task": dict(task_summary(task), notes=task.notes + notes), "config": cfg.to_dict(),
            "chance": float(np.mean([chance_score(task.metric, y[s.test], len(task.classes)) for s in splits])),
            "folds": folds, "fine_tuned": _mean_std([r.test for r in results]),
            "frozen_probe": dict(_mean_std([f["probe"] for f in folds]), grid=cfg.probe) if probe else None,
            "kept": max(results, key=lambda r: r.valid).name}


def _cell(entry: dict | None) -> str:
    if entry is None:
        return "-"
    return f"{100 * entry['mean']:.1f}" + (f" ± {100 * entry['std']:.1f}" if entry["std"] is not None else "")


def markdown(report: dict) -> str:
    t, c = report["task"], report["config"]
    ft, probe = report["fine_tuned"], report["frozen_probe"]
    lines = [f"# specmae fine-tuning: {t['name']}", "",
             f"From `{report['source']}` on {t['source']}: {t['type']}, {len(t['classes'])} classes, "
             f"{t['clips']} clips. Test {t['metric']} x 100 of the checkpoint kept on validation; the frozen "
             "probe is the same starting checkpoint's encoder, frozen, with the probe grid on the same folds.", "",
             "| fold | train / valid / test | best epoch | valid | test, fine-tuned | test, frozen probe |",
             "|---|---|---|---|---|---|"]
    for f in report["folds"]:
        probe_cell = f"{100 * f['probe']:.1f}" if f["probe"] is not None else "-"
        lines.append(f"| {f['name']} | {f['train']} / {f['valid_clips']} / {f['test_clips']} | {f['best_epoch']} | "
                     f"{100 * f['valid']:.1f} | {100 * f['test']:.1f} | {probe_cell} |")
    lines.append(f"| **mean ± std** | | | | **{_cell(ft)}** | {_cell(probe)} |")
    lines.append("")
    if probe:
        lines.append(f"Gain from fine-tuning: {100 * (ft['mean'] - probe['mean']):+.1f} points "
                     f"(probe grid '{probe['grid']}'). Chance: {100 * report['chance']:.1f}.")
    else:
        lines.append(f"Chance: {100 * report['chance']:.1f}. (No frozen probe: probe = none.)")
    m, a, tr = c["model"], c["augment"], c["train"]
    lines += ["", "## Recipe", "",
              f"- Classifier: {m['pool']} pooling + LayerNorm + Linear (init std {m['head_init_std']:g}); input "
              f"{m['n_frames']} frames; drop-path {m['drop_path']:g}; Patchout {m['patchout']} patches.",
              f"- AdamW {tuple(tr['betas'])}, weight decay {tr['weight_decay']:g}, layer-wise lr decay "
              f"{c['layer_decay']:g}; lr = {tr['blr']:g} x {tr['batch_size']} / 256, {tr['warmup_epochs']:g} warm-up "
              f"epochs then cosine to {tr['min_lr']:g}, {tr['epochs']} epochs.",
              f"- Loss {c['loss']} with label smoothing {c['label_smoothing']:g}; {c['sampler']} sampling.",
              f"- Augmentation: mixup {a['mixup']} (alpha {a['mixup_alpha']:g}), SpecAugment up to "
              f"{a['freq_mask']:.0%} of the bins and {a['time_mask']:.0%} of the frames, gain ±{a['gain_db']:g} dB.",
              f"- `specmae.load(RUN)` and `specmae predict RUN` use {report['kept']}/ (the best validation score)."]
    lines += [f"- {n}" for n in t["notes"]]
    return "\n".join(lines) + "\n"


def plot_curves(report: dict, out: Path) -> Path:
    """Training loss (the mean of every `train.log_every` steps, left) and validation metric per epoch
    (right), one line per fold."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = report["task"]["metric"]
    fig, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(11, 3.8))
    for f in report["folds"]:
        records = [json.loads(line) for line in (Path(f["run"]) / "log.jsonl").read_text().splitlines()]
        steps = [r for r in records if "loss" in r]
        valid = [r for r in records if r.get("event") == "validation"]
        loss_ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=1, label=f["name"])
        val_ax.plot([r["epoch"] + 1 for r in valid], [100 * r[metric] for r in valid], marker=".", label=f["name"])
    loss_ax.set(xlabel="optimizer step", ylabel="training loss", title="training loss")
    val_ax.set(xlabel="epoch", ylabel=f"{metric} x 100", title=f"validation {metric}")
    for ax in (loss_ax, val_ax):
        ax.grid(alpha=0.3)
    if len(report["folds"]) > 1:
        val_ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return save_png(fig, out)


def write_report(report: dict, out: Path) -> None:
    """report.json, report.md, curves.png and (single-label tasks) confusion.png, atomically."""
    atomic_write_text(out / "report.json", json.dumps(report, indent=1))
    atomic_write_text(out / "report.md", markdown(report))
    try:
        plot_curves(report, out / "curves.png")
        folds = [f["confusion"] for f in report["folds"] if f["confusion"] is not None]
        if folds:
            t = report["task"]
            plot_confusion(np.sum(folds, axis=0), t["classes"],
                           f"{t['name']} fine-tuned: {t['metric']} {_cell(report['fine_tuned'])}", out / "confusion.png")
    except ImportError:
        log.warning("matplotlib is not installed: no curves.png / confusion.png (pip install 'specmae[plots]')")
