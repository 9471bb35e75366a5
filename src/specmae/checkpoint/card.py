"""What `specmae push` uploads: a checkpoint, its run's figures and a model card (docs/hub.md).

    stage(source, out, repo)   -> `out`, a new folder holding config.json, model.safetensors,
                                  README.md (the card) and the run's figures

The card's YAML header is the Hub's model metadata (library_name, license, tags, pipeline_tag,
base_model of a fine-tuned model); its body says what the model is (recipe, front-end, input
size, training data and steps), how to load it, and the scores the run measured: the built-in
probe (probe.json), the fine-tuning report (report.json) and `specmae evaluate` reports.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import yaml

from ..files import atomic_folder, read_jsonl
from .hub import PREFIX, is_hub_name, parse_name
from .loader import Checkpoint, load, resolve
from .store import CONFIG, TRAIN_STATE, WEIGHTS, CheckpointError

FIGURES = {"loss.png": "training loss", "reconstruction.png": "reconstructions of held-out clips",
           "curves.png": "training loss and validation metric per fold", "confusion.png": "test confusion matrix"}


def stage(source: str | os.PathLike, out: str | os.PathLike, repo: str, *, revision: str | None = None,
          license: str = "other", base_model: str | None = None, reports: tuple = (),
          train_state: bool = False) -> Path:
    """Write what `specmae push SOURCE REPO` uploads into the new folder `out` -> out.

    `source` is a run folder (its newest checkpoint; a fine-tuning run's kept one) or a checkpoint
    folder; the checkpoint is loaded first, so a damaged one is refused before anything is
    written. train_state.pt (optimizer state) is copied only with `train_state`. The folder is
    assembled under a temporary name and renamed, so `out` is complete or absent.
    """
    folder = resolve(source)
    ck = load(folder)
    run = Path(source) if Path(source).resolve() != folder.resolve() else None
    files = [folder / CONFIG, folder / WEIGHTS]
    if train_state:
        if not (folder / TRAIN_STATE).is_file():
            raise CheckpointError(f"{folder}: no {TRAIN_STATE} to upload (a converted or fine-tuned kept checkpoint "
                                  "has none)")
        files.append(folder / TRAIN_STATE)
    figures = [run / name for name in FIGURES if run is not None and (run / name).is_file()]
    out = Path(out)
    with atomic_folder(out) as tmp:
        for f in files + figures:
            shutil.copyfile(f, tmp / f.name)
        card = model_card(ck, repo, revision=revision, run=run, license=license, base_model=base_model,
                          reports=[_read_report(r) for r in reports], figures=[f.name for f in figures])
        (tmp / "README.md").write_text(card)
    return out


def model_card(ck: Checkpoint, repo: str, *, revision: str | None = None, run: Path | None = None,
               license: str = "other", base_model: str | None = None, reports: list[tuple[str, dict]] = (),
               figures: list[str] = ()) -> str:
    """README.md for the Hub: YAML metadata, then what the model is, how to load it and its scores."""
    fine_tuned = ck.finetune is not None
    run_config = _read_json(run / "config.json") if run is not None else {}
    if fine_tuned and base_model is None and is_hub_name(run_config.get("source")):
        base_model = parse_name(run_config["source"])[0]
    meta = {"library_name": "specmae", "license": license,
            "tags": ["specmae", "audio", "masked-autoencoder", ck.config.frontend.kind]
            + (["audio-classification"] if fine_tuned else ["self-supervised"]),
            "pipeline_tag": "audio-classification" if fine_tuned else "feature-extraction"}
    if fine_tuned and base_model:
        meta["base_model"] = base_model
    name = f"{PREFIX}{repo}" + (f"@{revision}" if revision else "")
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "", f"# {repo}", "",
             _summary(ck, base_model), "", *_facts(ck, run, run_config), "", "## Use", "",
             "```python", "import specmae  # pip install 'specmae[hub]'", f'model = specmae.load("{name}")',
             (f"probs = model.predict(waveform, sample_rate={ck.config.frontend.sample_rate})  "
              "# (C,) probabilities of model.labels" if fine_tuned else
              f"out = model.embed(waveform, sample_rate={ck.config.frontend.sample_rate})  "
              "# out.frames (N, D), out.timestamps (N,) ms, out.clip (D,)"),
             "```", "",
             f"or `specmae {'predict' if fine_tuned else 'embed'} {name} audio/ --out "
             f"{'predictions.csv' if fine_tuned else 'embeddings/'}`; any sample rate is resampled to "
             f"{ck.config.frontend.sample_rate} Hz, and audio of any length is cut into the model's width.", ""]
    lines += _scores(run, reports)
    if figures:
        lines += ["## Training", ""] + [f"![{FIGURES[f]}]({f})" for f in figures] + [""]
    return "\n".join(lines)


def _summary(ck: Checkpoint, base_model: str | None) -> str:
    enc = ck.config.model.encoder
    if ck.finetune is not None:
        f = ck.finetune
        base = f" from [{base_model}](https://huggingface.co/{base_model})" if base_model else ""
        return (f"A specmae audio classifier: a ViT encoder fine-tuned{base} "
                f"on {f.task or 'a labelled task'} ({f.kind}, {len(f.labels)} classes: "
                f"{', '.join(f.labels[:10])}{', ...' if len(f.labels) > 10 else ''}).")
    origin = (f"official {ck.imported.get('format', '')} weights converted to specmae"
              if ck.imported else "pre-trained by masked spectrogram modeling (a masked autoencoder on log-mel "
                                  "patches)")
    return (f"A specmae audio encoder, {origin}: it turns audio into one "
            f"{enc.grid[0] * enc.dim}-dimensional embedding per {enc.patch_t} frames "
            f"({1000 * enc.patch_t * ck.config.frontend.hop_length / ck.config.frontend.sample_rate:g} ms).")


def _facts(ck: Checkpoint, run: Path | None, run_config: dict) -> list[str]:
    c, enc, fe = ck.config, ck.config.model.encoder, ck.config.frontend
    params = sum(p.numel() for p in ck.model.encoder.parameters()) / 1e6
    seconds = enc.n_frames * fe.hop_length / fe.sample_rate
    facts = [f"- **Model**: ViT encoder, width {enc.dim}, depth {enc.depth}, {enc.heads} heads "
             f"({params:.1f} M parameters){', [CLS] token' if enc.use_cls else ''}.",
             f"- **Front-end**: `{fe.kind}` log-mel, {fe.sample_rate} Hz, {fe.n_mels} mel bins, hop {fe.hop_length} "
             f"samples, {fe.stats} normalisation statistics (stored in the checkpoint).",
             f"- **Input**: {enc.n_mels} x {enc.n_frames} log-mel frames ({seconds:.2f} s), "
             f"{enc.patch_f} x {enc.patch_t} patches."]
    if ck.finetune is not None:
        f, cfg = ck.finetune, ck.finetune.config
        facts.append(f"- **Recipe**: fine-tuned ({f.metric}; {cfg.model.pool} pooling, {_count(cfg.train.epochs, 'epoch')}, "
                     f"batch {cfg.train.batch_size}, layer-wise lr decay {cfg.layer_decay:g}), kept on fold "
                     f"{f.fold or '-'}'s validation score.")
        task = _read_json(run / "report.json").get("task", {}) if run is not None else {}
        if task:
            facts.append(f"- **Training data**: {task['name']} ({task['source']}): {task['clips']} clips, "
                         f"{len(task['classes'])} classes.")
    elif ck.imported:
        facts.append(f"- **Recipe**: official {ck.imported.get('format')} training; imported from "
                     f"`{Path(str(ck.imported.get('file', ''))).name}` (SHA-256 {str(ck.imported.get('sha256'))[:12]}).")
    else:
        m = c.masking
        facts.append(f"- **Recipe**: masked autoencoder, `{m.strategy}` masking of {m.ratio:.0%} of the patches, "
                     f"decoder width {c.model.decoder.dim}, depth {c.model.decoder.depth}"
                     f"{', per-patch normalised targets' if c.model.decoder.norm_pix_loss else ''}; AdamW, "
                     f"batch {c.train.batch_size}, base lr {c.train.blr:g}, {_count(c.train.epochs, 'epoch')}.")
        facts.append(f"- **Training data**: {_data(c, run)}.")
    epoch = f" ({_count(ck.epoch, 'epoch')})" if ck.epoch is not None else ""
    loss = _last_loss(run / "log.jsonl") if run is not None and ck.finetune is None else None
    facts.append(f"- **Steps**: {ck.step} optimizer steps{epoch}"
                 + (f"; last logged training loss {loss:.4f}." if loss is not None else "."))
    return facts


def _data(c, run: Path | None) -> str:
    """The pre-training data: the built-in corpus, or a prepared corpus's size."""
    if c.train.data is None:
        return f"specmae's built-in synthetic corpus, {c.train.builtin_clips} clips"
    name = Path(c.train.data).name  # the folder's name only: a card should not publish local paths
    for corpus in ([run / "corpus"] if run is not None else []) + [Path(c.train.data)]:
        manifest = _read_json(corpus / "manifest.json")
        if manifest.get("shards"):
            clips = sum(e["clips"] for e in manifest["shards"])
            hours = manifest.get("hours")
            return f"`{name}`, {clips:,} clips" + (f", {hours:g} h of audio" if hours is not None else "")
    return f"`{name}`"


def _scores(run: Path | None, reports: list[tuple[str, dict]]) -> list[str]:
    lines = []
    probe = _read_json(run / "probe.json") if run is not None else {}
    if probe:
        lines += ["## Scores", "", "Frozen-encoder probe on a held-out labelled split of specmae's built-in corpus "
                  "(test accuracy):", "", "| features | accuracy |", "|---|---|"]
        lines += [f"| {k} | {100 * v:.1f} % |" for k, v in probe.items()] + [""]
    ft = _read_json(run / "report.json") if run is not None else {}
    if ft.get("fine_tuned"):
        lines += [] if lines else ["## Scores", ""]
        t, probe = ft["task"], ft.get("frozen_probe")
        lines += [f"Fine-tuning on {t['name']}: test {t['metric']} x 100 over {len(ft['folds'])} fold(s), "
                  "mean ± std:", "", "| model | test |", "|---|---|",
                  f"| fine-tuned | {_cell(ft['fine_tuned'])} |"]
        lines += [f"| frozen probe of the starting encoder | {_cell(probe)} |"] if probe else []
        lines += [f"| chance | {100 * ft['chance']:.1f} |", ""]
    for where, report in reports:
        lines += [] if lines else ["## Scores", ""]
        lines += [f"`specmae evaluate` ({Path(where).name}; frozen encoder, HEAR-style probes), test score x 100, "
                  "mean ± std over folds:", "", "| task | metric | model | test |", "|---|---|---|---|"]
        for task, entry in report.get("tasks", {}).items():
            lines += [f"| {task} | {entry['metric']} | {model} | {_cell(r)} |" for model, r in entry["results"].items()]
        lines.append("")
    return lines


def _cell(entry: dict | None) -> str:
    if not entry:
        return "-"
    return f"{100 * entry['mean']:.1f}" + (f" ± {100 * entry['std']:.1f}" if entry.get("std") is not None else "")


def _read_report(path: str | os.PathLike) -> tuple[str, dict]:
    """A `specmae evaluate` report.json, or the folder holding one -> (path, report)."""
    path = Path(path)
    path = path / "report.json" if path.is_dir() else path
    report = _read_json(path)
    if not isinstance(report.get("tasks"), dict):
        raise ValueError(f"--report {path}: not a report.json of specmae evaluate (no tasks)")
    return str(path), report


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _last_loss(log: Path) -> float | None:
    try:
        records = read_jsonl(log)
    except OSError:
        return None
    return next((float(r["loss"]) for r in reversed(records) if isinstance(r.get("loss"), (int, float))), None)


def _count(n, noun: str) -> str:
    return f"{n:g} {noun}{'' if n == 1 else 's'}"
