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
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
from torch import Tensor

from ..audio import FrontendConfig
from ..audio.normalize import NormStats
from ..checkpoint.loader import Checkpoint
from ..model.classifier import Classifier
from .embedder import CHUNK_TOKENS, PRECISIONS, Embedder


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
