"""A fine-tuning run: every fold of a task, the frozen-probe comparison, the report (docs/finetuning.md).

    specmae finetune CKPT TASK --out RUN

    RUN/config.json             the fine-tuning config ('auto' choices made), the source, the task
    RUN/<fold>/                 one run folder per fold (`model` for a single split, `fold-<name>`
                                for k-fold): checkpoints/ with `best` (fine-tuned) and `probe`
                                (the probe grid's winning head on the frozen encoder) kept beside
                                the rotation, log.jsonl, tb/, result.json; its `latest` names the
                                fine-tuned one unless the probe is better on validation beyond
                                chance (or the one `prefer` names)
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

from ..checkpoint import load
from ..checkpoint.hub import reference
from ..config import RESUME_MAY_DIFFER, FinetuneConfig
from ..evaluation.embedders import AudioStore
from ..evaluation.report import (cell, chance, mean_std, notes, plot_confusion, plot_curves, table, task_summary,
                                 write_report)
from ..evaluation.tasks import Split, Task
from ..files import atomic_write_text, read_jsonl
from ..outputs import check_resume, claim, read_settings
from ..schema import ConfigError
from ..version import __version__
from .engine import setup, split_batch
from .finetune import FoldResult, FoldTrainer, prepare, read_result

log = logging.getLogger(__name__)

PROBE_NAME = "frozen probe"


def fold_folder(task: Task, split: Split) -> str:
    return f"fold-{split.name}" if task.folds else "model"


def finetune(cfg: FinetuneConfig, source: str | os.PathLike, task: Task, out: str | os.PathLike, *,
             resume: bool = False, overwrite: bool = False, progress: bool = True,
             max_steps: int | None = None) -> dict | None:
    """Fine-tune checkpoint `source` on every fold of `task` into `out`; -> the report (rank 0),
    or None on other ranks and when `max_steps` (optimizer steps of the first unfinished fold,
    the schedule unchanged: how tests interrupt a run) stopped it early.

    `out` is claimed as outputs.claim says: a fine-tuning run there is continued with `resume`
    (its config.json compared field by field with this one's), else refused, or moved aside on
    `overwrite`, as is any other non-empty folder."""
    asked = cfg.validate().to_dict()  # as given: what `specmae finetune --resume` starts from (asked_config)
    claimed = claim(out, "folder", "specmae finetune", overwrite=overwrite, resume=resume, offer_resume=True,
                    ours=_describe_run)  # before any work
    out = claimed.path
    env = setup(cfg.train)
    ck = load(source)  # the encoder's weights are copied into each fold's classifier
    cfg = prepare(cfg, ck, task)
    splits = task.splits(cfg.train.seed, cfg.valid_fraction)
    smallest = min(splits, key=lambda s: len(s.train))
    cfg = cfg.for_size(len(smallest.train))
    split_batch(cfg.train, env.world)
    if len(smallest.train) < cfg.train.batch_size:
        raise ConfigError(f"train.batch_size: {cfg.train.batch_size} is more than the {len(smallest.train)} "
                          f"training clips of {task.name} ({fold_folder(task, smallest)}); lower it")
    rate = ck.config.frontend.sample_rate
    store = AudioStore()
    store.check([task], rate)  # every clip decodes, or one error listing the bad ones
    run_config = dict(source=reference(source), task=task_summary(task), finetune=cfg.to_dict(), asked=asked)
    if claimed.resumes and (stored := read_settings(out / "config.json")) is not None:
        try:  # read as a FinetuneConfig: a field added since the run started takes the value it had then
            stored["finetune"] = FinetuneConfig.stored(stored.get("finetune")).to_dict()
        except ConfigError as e:
            raise ConfigError(f"{out / 'config.json'}: {e}") from e
        check_resume(out, out / "config.json", stored, run_config,  # what was asked may differ, not what ran
                     ("asked", *(f"finetune.train.{k}" for k in RESUME_MAY_DIFFER)))
    env.barrier()  # every process has checked before the main one moves anything aside
    if env.main:
        claimed.take()
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
    write_report(out, report, markdown(report), report_figures(report))
    kept = next(r for r in results if r.name == report["kept"])
    atomic_write_text(out / "latest", f"{kept.name}/checkpoints/{kept.kept}\n")
    return report


def asked_config(out: str | os.PathLike) -> dict:
    """The fine-tuning config the run in `out` was started with, as given (before its 'auto' choices
    and the fitting to the task's size), or {} for a run written before it was recorded: what a
    resumed run starts from, so that only the options given again are checked against the run's."""
    stored = read_settings(Path(out) / "config.json")
    if stored is None or not isinstance(stored.get("asked"), dict):
        return {}
    try:
        return FinetuneConfig.stored(stored["asked"]).to_dict()
    except ConfigError:
        return {}  # finetune() names what is wrong with the run's config.json


def _describe_run(out: Path) -> tuple[str, str] | None:
    """('a fine-tuning run', its finished folds), or None when `out` holds none."""
    if not (out / "config.json").is_file():
        return None
    done = sorted(p.parent.name for p in out.glob("*/result.json"))
    return "a fine-tuning run", f"finished folds: {', '.join(done)}" if done else "no fold finished yet"


def build_report(cfg: FinetuneConfig, source: str, task: Task, splits: list[Split], results: list[FoldResult],
                 probe: dict | None) -> dict:
    """Every number of the run: per fold and over folds, fine-tuned and frozen probe."""
    folds = [dict(asdict(r), probe=probe["folds"][i]["test"] if probe else None) for i, r in enumerate(results)]
    probed = [r.probe_test for r in results]
    used = [r.test if r.kept == "best" else r.probe_test for r in results]
    return {"specmae": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "source": source,
            "task": dict(task_summary(task), notes=notes(task, splits)), "config": cfg.to_dict(),
            "chance": chance(task, splits), "folds": folds, "fine_tuned": mean_std([r.test for r in results]),
            "probe_classifier": mean_std(probed) if None not in probed else None, "used": mean_std(used),
            "frozen_probe": dict(mean_std([f["probe"] for f in folds]), grid=cfg.probe) if probe else None,
            "kept": max(results, key=lambda r: r.valid if r.kept == "best" else r.probe_valid).name}


def markdown(report: dict) -> str:
    t, c = report["task"], report["config"]
    ft, probe = report["fine_tuned"], report["frozen_probe"]
    lines = [f"# specmae fine-tuning: {t['name']}", "",
             f"From `{report['source']}` on {t['source']}: {t['type']}, {len(t['classes'])} classes, "
             f"{t['clips']} clips. Test {t['metric']} x 100 of the checkpoint kept on validation; the frozen "
             "probe is the same starting checkpoint's encoder, frozen, with the probe grid on the same folds.", "",
             *table(["fold", "train / valid / test", "best epoch", "valid", "test, fine-tuned",
                     "valid / test, probe classifier (head)", "test, frozen probe", "used"],
                    [*([f["name"], f"{f['train']} / {f['valid_clips']} / {f['test_clips']}", f["best_epoch"],
                        f"{100 * f['valid']:.1f}", f"{100 * f['test']:.1f}",
                        f"{pct(f['probe_valid'], f['probe_test'])} ({f.get('probe_head', 'linear')})", pct(f["probe"]),
                        f"probe classifier ({f.get('probe_head', 'linear')})" if f["kept"] == "probe" else "fine-tuned"]
                       for f in report["folds"]),
                     ["**mean ± std**", "", "", "", f"**{cell(ft)}**", cell(report.get("probe_classifier")), cell(probe),
                      cell(report.get("used"))]]),
             ""]
    if probe:
        gain = 100 * (ft["mean"] - probe["mean"])
        lines.append(f"Gain from fine-tuning: {gain:+.1f} points (probe grid '{probe['grid']}')."
                     + (f" **Fine-tuning lost to the frozen probe by {-gain:.1f} points.**" if gain < 0 else ""))
    else:
        lines.append("No frozen probe (probe = none).")
    grid = c["probe"] if c["probe"] != "none" else "linear"
    lines.append(f"Chance: {100 * report['chance']:.1f}. The probe classifier is the winning head of the '{grid}' "
                 "probe grid on the frozen starting encoder's pooled features, a model in its own right; 'used' "
                 "is what `specmae.load(RUN)` "
                 f"and `predict` run per fold (prefer = {c.get('prefer', 'finetuned')}).")
    m, a, tr = c["model"], c["augment"], c["train"]
    recipe = ("the train section as configured (scale none; MaskSpec's recipe is `--config maskspec-finetune`)"
              if c.get("scale", "none") == "none" else
              f"the default recipe fitted to the task's size (scale auto): batch {tr['batch_size']}, at least "
              f"{c['min_steps']} optimizer steps and augmentation scaled for "
              f"{min(f['train'] for f in report['folds'])} training clips, since MaskSpec's recipe, made for "
              "AudioSet-scale tasks, gives a small task too few updates (`--config maskspec-finetune` runs it as is)")
    lines += ["", "## Recipe", "", f"- Ran {recipe}; "
              + ("fine-tuning starts from the linear probe's head (LP-FT)." if c.get("lp_ft") else "a new head."),
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


def pct(*values: float | None) -> str:
    return " / ".join("-" if v is None else f"{100 * v:.1f}" for v in values)


def report_figures(report: dict) -> list:
    """curves.png: each fold's training loss and validation metric (its log.jsonl); confusion.png:
    the test confusion matrix summed over folds (single-label tasks)."""
    t = report["task"]
    logs = {f["name"]: read_jsonl(Path(f["run"]) / "log.jsonl") for f in report["folds"]}
    figures = [("curves.png", partial(plot_curves, logs, t["metric"]))]
    if t["type"] != "multilabel":
        figures.append(("confusion.png", partial(plot_confusion, [f["confusion"] for f in report["folds"]],
                                                 t["classes"], f"{t['name']} - fine-tuned: {t['metric']} "
                                                 f"{cell(report['fine_tuned'])}")))
    return figures
