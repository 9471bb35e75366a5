"""Export the encoder for use without specmae: TorchScript, torch.export, or ONNX.

What the artefact computes, for one batch of log-mel chunks of the model's width:

    lms    (B, F, T) float32 log-mel as the checkpoint's front-end gives it (NOT normalised by the corpus statistics)
    -> normalisation with the checkpoint's stored statistics -> encoder on all patches
    -> frames (B, N_T, N_F*D) float32 frame features of the last layer

The front-end (STFT, mel filters) and the chunking of longer audio are NOT inside: compute the
log-mel (`build_frontend` of the config's front-end), cut it into T-frame chunks, pad the
last one with the stored mean (0 after normalisation), and keep the first ceil(T_lms / p_t)
frames; features.py does exactly this. The batch size is dynamic. The checkpoint's config
(front-end, statistics, preset) travels with the artefact as `specmae.json`.

    exported     .pt2  torch.export.load(path).module()  (the default; AOTInductor for C++)
    torchscript  .pt   torch.jit.load(path), also from C++ libtorch; deprecated by torch >= 2.10
    onnx         .onnx needs the `onnx` and `onnxscript` packages
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from pathlib import Path

import torch
from torch import Tensor, nn

from ..audio.normalize import NormStats
from ..checkpoint import CheckpointError, load
from .chunking import tokens_to_frames
from ..model.vit import Encoder

FORMATS = ("exported", "torchscript", "onnx")
META = "specmae.json"


class ChunkEncoder(nn.Module):
    """(B, F, T) un-normalised log-mel chunks -> (B, N_T, N_F*D) frame features."""

    def __init__(self, encoder: Encoder, norm_stats: NormStats | tuple):
        super().__init__()
        self.encoder = encoder
        mean, std = NormStats.parse(norm_stats).check_bins(encoder.cfg.n_mels).tensors()
        self.register_buffer("mean", mean)  # () global, or (F, 1) per mel bin
        self.register_buffer("std", std)
        self.grid, self.prefix = encoder.cfg.grid, encoder.num_prefix

    def forward(self, lms: Tensor) -> Tensor:
        x = ((lms - self.mean) / self.std).unsqueeze(1)
        return tokens_to_frames(self.encoder(x), self.grid, self.prefix)


def export(checkpoint: str | os.PathLike, out: str | os.PathLike, fmt: str = "exported") -> Path:
    """Write the encoder of `checkpoint` to `out` in format `fmt` (see FORMATS); returns `out`."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: allowed {FORMATS}")
    ck = load(checkpoint)
    model, config = ck.model, ck.to_json()
    module = ChunkEncoder(model.encoder, ck.norm_stats).eval()
    enc = model.encoder.cfg  # a fine-tuned classifier's encoder has its fine-tuning width
    example = torch.randn(2, enc.n_mels, enc.n_frames) * 4 - 7
    meta = json.dumps({"input": "(B, n_mels, n_frames) log-mel, not normalised",
                       "output": "(B, N_T, N_F*D) frame features, last layer", **config})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")  # torch.export wants the .pt2 suffix
    with torch.no_grad():
        if fmt == "torchscript":
            with warnings.catch_warnings():  # the tracer's notes on the fixed 3-way q/k/v split
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                traced = torch.jit.trace(module, example)
            torch.jit.save(traced, str(tmp), _extra_files={META: meta})
        elif fmt == "exported":
            batch = torch.export.Dim("batch", min=1)
            program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
            torch.export.save(program, tmp, extra_files={META: meta})
        else:
            try:
                program = torch.onnx.export(module, (example,), dynamo=True, input_names=["lms"],
                                            output_names=["frames"], dynamic_shapes=({0: "batch"},))
            except ImportError as e:
                raise RuntimeError(f"ONNX export needs the onnx and onnxscript packages ({e})") from e
            program.model.metadata_props[META] = meta
            program.save(str(tmp))
    os.replace(tmp, out)
    return out


def load_exported(path: str | os.PathLike) -> tuple[object, dict]:
    """-> (callable module, config) for a TorchScript (.pt) or torch.export (.pt2) artefact."""
    path = Path(path)
    extra = {META: ""}
    try:
        if zipfile.is_zipfile(path) and any(n.endswith(".pt2") or "/archive_format" in n
                                            for n in zipfile.ZipFile(path).namelist()):
            program = torch.export.load(path, extra_files=extra)
            return program.module(), json.loads(extra[META])
        module = torch.jit.load(str(path), _extra_files=extra)
    except (RuntimeError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: not an exported specmae encoder ({e})") from e
    return module, json.loads(extra[META])
