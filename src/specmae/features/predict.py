"""Label probabilities from a fine-tuned classifier, for audio of any length (docs/finetuning.md).

    waveform (S,) --front-end, normalise--> log-mel (F, T_lms) --windows of the classifier's width T,
      the last padded with 0--> (n, 1, F, T) --classifier--> window probabilities (n, C)
      --mean over windows, weighted by the real frames of each--> clip probabilities (C,)

Windows do not overlap: window k holds frames [k*T, (k+1)*T). Each window's probabilities are
softmax of its logits (single-label tasks) or sigmoid (multi-label); the clip's are their mean
weighted by the real (unpadded) log-mel frames of each window, so that a last window holding a
few frames of audio and padding counts for only those frames. A clip shorter than T is one
window, padded with 0 (the corpus mean) as in training. Windows of every clip in a call are
classified in groups of bounded size, so memory stays flat for any length.

    import specmae
    model = specmae.load("runs/ft")                   # a fine-tuned run or checkpoint -> Predictor
    probs = model.predict(waveform, sample_rate=44100)  # (C,) for a clip; (B, C) for a batch or list
    model.labels[int(probs.argmax())]

`specmae predict RUN AUDIO... --out preds.csv` (`predict_files`) runs this over files as a
resumable batch job: the top-k labels and probabilities of each file, one CSV row per file.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from ..audio import FrontendConfig
from ..audio.normalize import NormStats
from ..checkpoint import loader
from ..checkpoint.loader import Checkpoint
from ..files import atomic_write_text, write_tsv
from ..model.classifier import Classifier
from .embed import batches, find_audio, run_batch
from .embedder import CHUNK_TOKENS, EMBED_OPTIONS, PRECISIONS, Embedder

log = logging.getLogger(__name__)


class Predictor(Embedder):
    """A fine-tuned classifier with its front-end and normalisation: audio in, label probabilities
    out (`predict`). Being an Embedder too, it also embeds with its fine-tuned encoder (`embed`).

    labels: class names in the order of the outputs; kind: 'multiclass', 'binary' or 'multilabel'.
    """

    def __init__(self, classifier: Classifier, frontend: FrontendConfig, norm_stats: NormStats | Sequence,
                 labels: Sequence[str], kind: str, *, checkpoint: Checkpoint | None = None, **options):
        super().__init__(classifier.encoder, frontend, norm_stats, checkpoint=checkpoint, **options)
        if len(labels) != classifier.n_classes:
            raise ValueError(f"{len(labels)} labels for a classifier of {classifier.n_classes} outputs")
        self.classifier, self.labels, self.kind = classifier, list(labels), kind
        self.eval()

    @property
    def window_frames(self) -> int:
        """T: log-mel frames per window (the fine-tuning width)."""
        return self.classifier.input_shape[1]

    def probabilities(self, logits: Tensor) -> Tensor:
        """(n, C) logits -> probabilities: sigmoid for multi-label tasks, softmax otherwise."""
        logits = logits.float()
        return torch.sigmoid(logits) if self.kind == "multilabel" else torch.softmax(logits, dim=-1)

    @torch.no_grad()
    def predict(self, audio, sample_rate: int, *, names: Sequence[str] | None = None,
                precision: str | None = None) -> Tensor:
        """audio: (S,) or (B, S) tensor/array, or a list of 1-D clips, at `sample_rate` (resampled
        here) -> probabilities (C,) for one clip, (B, C) otherwise, float32 on the model's device."""
        precision = self._options(None, None, None, precision)[3]
        clips, names, kind = self._clips(audio, sample_rate, names)
        lms = [self.frontend(c) for c in clips]
        probs = self.predict_lms(self._normalise(lms, names, "stored", inplace=True), precision)
        return probs[0] if kind == "one" else probs

    @torch.no_grad()
    def predict_lms(self, lms: Sequence[Tensor], precision: str = "fp32") -> Tensor:
        """Normalised log-mel clips [(F, T_i)] on the model's device -> probabilities (B, C)."""
        width, F = self.window_frames, lms[0].shape[0]
        enc = self.classifier.encoder
        per_call = self.chunks_per_call or max(1, CHUNK_TOKENS.get(self.device.type, 8192)
                                               // (enc.cfg.num_patches + enc.num_prefix))
        dtype = PRECISIONS[precision]
        autocast = (torch.autocast(self.device.type, dtype=dtype) if dtype is not None
                    else contextlib.nullcontext())
        plan = [(i, k) for i, x in enumerate(lms) for k in range(-(-x.shape[-1] // width))]
        sums = torch.zeros(len(lms), self.classifier.n_classes, device=self.device)
        frames = torch.tensor([float(x.shape[-1]) for x in lms], device=self.device)
        training = self.classifier.training
        self.classifier.eval()  # no drop-path nor Patchout, whatever the caller's mode
        try:
            for start in range(0, len(plan), per_call):
                group = plan[start:start + per_call]
                x = lms[0].new_zeros(len(group), 1, F, width)
                real = torch.zeros(len(group), device=self.device)
                for j, (i, k) in enumerate(group):
                    piece = lms[i][:, k * width:(k + 1) * width]
                    x[j, 0, :, :piece.shape[-1]] = piece
                    real[j] = piece.shape[-1]
                with autocast:
                    probs = self.probabilities(self.classifier(x))                  # (n, C)
                clip = torch.tensor([i for i, _ in group], device=self.device)
                sums.index_add_(0, clip, probs * real[:, None])
        finally:
            self.classifier.train(training)
        return sums / frames[:, None]


def from_checkpoint(ck: Checkpoint, **options) -> Predictor:
    """The Predictor of a loaded fine-tuned checkpoint."""
    if ck.finetune is None:
        raise ValueError(f"{ck.path}: a pre-trained checkpoint has no classifier head; fine-tune it first "
                         "(specmae finetune)")
    return Predictor(ck.model, ck.config.frontend, ck.norm_stats, ck.finetune.labels, ck.finetune.kind,
                     checkpoint=ck, **options)


def load(path, device: str | torch.device = "cpu", **options) -> Embedder:
    """A ready, eval-mode Embedder from a specmae checkpoint, a run folder, or an official
    MSM-MAE/M2D .pth file (converted in memory; `specmae convert` keeps the result). A fine-tuned
    checkpoint or run gives a Predictor: an Embedder with `predict` (label probabilities).

    options: Embedder options (layers, layer_mode, normalization, precision, chunks_per_call, compile),
    and for .pth files the `official.load_official` options (preset, heads, norm_stats, ...).
    """
    embed_opts = {k: v for k, v in options.items() if k in EMBED_OPTIONS}
    other = {k: v for k, v in options.items() if k not in EMBED_OPTIONS}
    ck = loader.load(path, device, **other)
    if ck.finetune is not None:
        return from_checkpoint(ck, **embed_opts)
    return Embedder(ck.model.encoder, ck.config.frontend, ck.norm_stats, checkpoint=ck, **embed_opts)


# --- the `specmae predict` batch job ---------------------------------------------------------


@dataclass
class PredictSummary:
    predicted: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    seconds_of_audio: float = 0.0


def _predict_batch(model: Predictor, batch: list[tuple[str, np.ndarray]], summary: PredictSummary,
                   precision: str) -> list[tuple[str, Tensor]]:
    """-> [(name, probabilities (C,))] of the clips that can be read."""
    return run_batch(lambda names, waves: model.predict(waves, model.sample_rate, names=names, precision=precision),
                     batch, summary.failed)


def predict_files(model: Predictor, inputs: list[str | Path], out: str | Path, *, checkpoint: str = "",
                  top_k: int = 5, batch_seconds: float = 160.0, workers: int = 4, precision: str = "fp32",
                  overwrite: bool = False, progress: bool = True, save_every: float = 60.0) -> PredictSummary:
    """Write the top-k labels and probabilities of every audio file of `inputs` to the CSV `out`.

    One row per file: path, label_1, score_1, ..., label_k, score_k (best first). Resumable: files
    already in `out` are skipped; the table is rewritten atomically every `save_every` seconds and
    at the end (also on interruption). Files that cannot be read are listed in <out>.errors.tsv
    (escaped as embed's errors.tsv: files.tsv_line) and the job goes on; `<out>.json` records the
    checkpoint, and a re-run with another is refused.
    """
    out = Path(out)
    if out.suffix != ".csv":
        raise ValueError(f"--out {out}: expected a .csv file name")
    if top_k < 1:
        raise ValueError(f"top_k {top_k}: expected a positive number of labels")
    top_k = min(top_k, len(model.labels))
    meta_path = out.with_name(out.name + ".json")
    meta = {"checkpoint": str(Path(checkpoint).resolve()) if checkpoint else "", "labels": model.labels,
            "kind": model.kind, "top_k": top_k, "window_frames": model.window_frames,
            "aggregation": "mean of window probabilities weighted by real frames"}
    if meta_path.is_file() and not overwrite and json.loads(meta_path.read_text()) != json.loads(json.dumps(meta)):
        raise ValueError(f"{out} holds predictions made with other settings ({meta_path}); "
                         "choose another output or pass overwrite")
    model._options(None, None, None, precision)
    files = find_audio(inputs)
    rows: dict[str, list[str]] = {} if overwrite or not out.is_file() else _read_rows(out)
    todo = [(p, n) for p, n in files if n not in rows]
    summary = PredictSummary(skipped=len(files) - len(todo))
    atomic_write_text(meta_path, json.dumps(meta, indent=1))
    bar = tqdm(total=len(todo), unit="file", disable=not progress, desc="predict")
    last_save = time.monotonic()
    try:
        for batch in batches(todo, model.sample_rate, batch_seconds, workers, summary):
            lengths = {name: len(wave) for name, wave in batch}
            for name, probs in _predict_batch(model, batch, summary, precision):
                scores, idx = probs.float().cpu().topk(top_k)
                rows[name] = [v for i, s in zip(idx.tolist(), scores.tolist()) for v in (model.labels[i], f"{s:.6f}")]
                summary.predicted += 1
                summary.seconds_of_audio += lengths[name] / model.sample_rate
            bar.update(summary.predicted + len(summary.failed) - bar.n)
            if time.monotonic() - last_save > save_every:
                _write_rows(out, rows, top_k)
                last_save = time.monotonic()
    finally:  # also on KeyboardInterrupt: keep what is done
        bar.close()
        _write_rows(out, rows, top_k)
        errors = out.with_name(out.name + ".errors.tsv")
        if summary.failed:
            write_tsv(errors, summary.failed)
        else:
            errors.unlink(missing_ok=True)  # a report from an earlier run would be stale
    return summary


def _read_rows(path: Path) -> dict[str, list[str]]:
    with open(path, newline="") as f:
        return {row[0]: row[1:] for row in list(csv.reader(f))[1:] if row}


def _write_rows(path: Path, rows: dict[str, list[str]], top_k: int) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path"] + [f"{c}_{i}" for i in range(1, top_k + 1) for c in ("label", "score")])
    writer.writerows([name] + rows[name] for name in sorted(rows))
    atomic_write_text(path, text.getvalue())
