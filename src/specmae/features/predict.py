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
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from ..audio import FrontendConfig, read_clips
from ..audio.normalize import NormStats
from ..checkpoint import loader
from ..checkpoint.hub import reference
from ..checkpoint.loader import Checkpoint
from ..files import atomic_write_text, check_output
from ..model.classifier import Classifier
from ..outputs import claim
from .chunking import windows
from .embedder import EMBED_OPTIONS, PRECISIONS, Embedder
from .jobs import JobSummary, checkpoint_identity, find_inputs, run_files

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
    def predict(self, audio, sample_rate: int | None = None, *, names: Sequence[str] | None = None,
                precision: str | None = None) -> Tensor:
        """audio as `embed` takes it (samples (S,) or (B, S), a list of clips, file paths; sample_rate
        None for files) -> probabilities (C,) for one clip, (B, C) otherwise, float32 on the model's device."""
        precision = self.check_options(precision=precision)[3]
        read = read_clips(audio, sample_rate, self.sample_rate, names=names, device=self.device)
        lms = [self.frontend(c) for c in read.waves]
        probs = self.predict_lms(self._normalise(lms, read.names, "stored", inplace=True), precision)
        return probs[0] if read.kind == "one" else probs

    @torch.no_grad()
    def predict_lms(self, lms: Sequence[Tensor], precision: str = "fp32") -> Tensor:
        """Normalised log-mel clips [(F, T_i)] on the model's device -> probabilities (B, C)."""
        dtype = PRECISIONS[precision]
        autocast = (torch.autocast(self.device.type, dtype=dtype) if dtype is not None
                    else contextlib.nullcontext())
        sums = torch.zeros(len(lms), self.classifier.n_classes, device=self.device)
        frames = torch.tensor([float(x.shape[-1]) for x in lms], device=self.device)
        training = self.classifier.training
        self.classifier.eval()  # no drop-path nor Patchout, whatever the caller's mode
        try:
            for x, where in windows(lms, self.window_frames, self.group_size):
                real = torch.tensor([n for _, _, n in where], device=self.device)
                with autocast:
                    probs = self.probabilities(self.classifier(x, real=real))       # (n, C)
                clip = torch.tensor([i for i, _, _ in where], device=self.device)
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


PredictSummary = JobSummary


def predict_files(model: Predictor, inputs: list[str | Path], out: str | Path, *, checkpoint: str = "",
                  top_k: int = 5, batch_seconds: float = 160.0, workers: int = 4, precision: str = "fp32",
                  overwrite: bool = False, progress: bool = True, save_every: float = 60.0) -> JobSummary:
    """Write the top-k labels and probabilities of every audio file of `inputs` to the CSV `out`.

    One row per file: path, label_1, score_1, ..., label_k, score_k (best first). The batch job
    (features/jobs.py) is embed's: resumable (files already in `out` are skipped; the table is
    rewritten atomically every `save_every` seconds and at the end, also on interruption), files
    that cannot be read listed in <out>.errors.tsv. `<out>.json` records the checkpoint by content
    and the settings: a re-run with others is refused (outputs.claim), or with `overwrite` the old
    table is moved aside (never deleted) and every file predicted again.
    """
    out = check_output(out, "file", "predictions (--out)")
    if out.suffix != ".csv":
        raise ValueError(f"--out {out}: expected a .csv file name")
    if top_k < 1:
        raise ValueError(f"top_k {top_k}: expected a positive number of labels")
    top_k = min(top_k, len(model.labels))
    meta_path, errors = out.with_name(out.name + ".json"), out.with_name(out.name + ".errors.tsv")
    meta = {"checkpoint": checkpoint_identity(model, checkpoint), "labels": model.labels,
            "kind": model.kind, "top_k": top_k, "window_frames": model.window_frames,
            "aggregation": "mean of window probabilities weighted by real frames"}
    meta = json.loads(json.dumps(meta))
    model.check_options(precision=precision)
    files = find_inputs(inputs)
    given = reference(checkpoint) if checkpoint else None

    def by_path(old: dict) -> dict:
        # Predictions written before checkpoints were recorded by content name the checkpoint by
        # the path given: the same path continues them.
        return dict(old, checkpoint=meta["checkpoint"]) if given and old.get("checkpoint") == given else old

    claim(out, "file", "specmae predict", overwrite=overwrite, settings=(meta_path, meta, "predictions"),
          also=(meta_path, errors), upgrade=by_path).take()
    rows: dict[str, list[str]] = _read_rows(out) if out.is_file() else {}

    def keep(name: str, probs: Tensor) -> None:
        scores, idx = probs.float().cpu().topk(top_k)
        rows[name] = [v for i, s in zip(idx.tolist(), scores.tolist()) for v in (model.labels[i], f"{s:.6f}")]

    return run_files(files, rows.__contains__,
                     lambda names, waves: model.predict(waves, model.sample_rate, names=names, precision=precision),
                     keep, sample_rate=model.sample_rate, settings=(meta_path, meta), errors=errors,
                     save=lambda: _write_rows(out, rows, top_k), batch_seconds=batch_seconds, workers=workers,
                     progress=progress, save_every=save_every, desc="predict")


def _read_rows(path: Path) -> dict[str, list[str]]:
    with open(path, newline="") as f:
        return {row[0]: row[1:] for row in list(csv.reader(f))[1:] if row}


def _write_rows(path: Path, rows: dict[str, list[str]], top_k: int) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path"] + [f"{c}_{i}" for i in range(1, top_k + 1) for c in ("label", "score")])
    writer.writerows([name] + rows[name] for name in sorted(rows))
    atomic_write_text(path, text.getvalue())
