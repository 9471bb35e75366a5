"""HEAR 2021 API (docs/architecture.md), as checked by the `hearvalidator` package.

    model = specmae.hear.load_model("runs/demo")          # checkpoint, run folder, official .pth
    scene = get_scene_embeddings(audio, model)            # audio: (n_sounds, n_samples) at 16 kHz
    frames, ts = get_timestamp_embeddings(audio, model)   # (n_sounds, n, D), (n_sounds, n) ms

Both run on the device of `audio` (the model follows it), in eval mode, without gradients.
The API fixes the input: a float tensor of exactly two dimensions, (n_sounds, n_samples), at
`model.sample_rate`. Anything else (1-D or 3-D, numpy arrays, lists) is refused, citing that
contract; nothing is guessed, so (16, 8) is 16 sounds of 8 samples. The samples are then checked
as every entry point's are (audio/inputs.py): float, finite, non-empty.

Timestamps are span centres (160*i + 75 ms for 16-frame patches). HEAR requires every timestamp
to lie within the audio, but the last frame may be only partly covered by audio and centred past
its end (1.98 s: frame 12 is centred at 1,995 ms). Such a trailing frame is left out of the
timestamp embeddings; it is at most one frame, since the frame before it ends inside the audio.
A clip shorter than one frame keeps its frame, stamped at the centre of the audio it covers.
Scene embeddings average every frame, as the official runtime does.

`timestamps="official"` reproduces the official MSM-MAE wrapper instead: every frame, stamped
at span starts with step = duration / frames; with `normalization="batch"` its embeddings too.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import Tensor, nn

from .audio import AudioError, Clips, FrontendConfig, read_clips
from .audio.normalize import NormStats
from .features import EMBED_OPTIONS, Embedder, load
from .model.mae import build_mae
from .model.presets import model_config

log = logging.getLogger(__name__)

TIMESTAMP_MODES = ("centre", "official")
CONTRACT = "the HEAR 2021 API takes a float tensor (n_sounds, n_samples) at the model's sample_rate"


class HearModel(nn.Module):
    """An Embedder with the attributes the HEAR API asks for; it wraps the Embedder, so every
    Embedder option (layers, precision, compile, ...) behaves here as in `specmae.load`."""

    def __init__(self, embedder: Embedder, timestamp_mode: str = "centre"):
        super().__init__()
        if timestamp_mode not in TIMESTAMP_MODES:
            raise ValueError(f"timestamps {timestamp_mode!r}: allowed {TIMESTAMP_MODES}")
        self.embedder = embedder
        self.timestamp_mode = timestamp_mode
        self.eval()

    @property
    def sample_rate(self) -> int:
        return self.embedder.sample_rate

    @property
    def scene_embedding_size(self) -> int:
        return self.embedder.embedding_size

    @property
    def timestamp_embedding_size(self) -> int:
        return self.embedder.embedding_size

    @property
    def device(self) -> torch.device:
        return self.embedder.device

    @property
    def encoder(self) -> nn.Module:
        return self.embedder.encoder

    @property
    def frontend(self) -> nn.Module:
        return self.embedder.frontend

    def embed(self, audio, sample_rate: int | None = None, **options):
        return self.embedder.embed(audio, sample_rate, **options)

    def forward(self, audio: Tensor) -> Tensor:
        return self.embedder(audio)


def load_model(model_file_path: str = "", **options) -> HearModel:
    """A specmae checkpoint or run folder, a `hf://ORG/NAME[@REVISION]` name, or an official
    MSM-MAE/M2D .pth (converted in memory).

    options: the Embedder's (layers, layer_mode, normalization, precision, chunks_per_call,
    compile); timestamps 'centre' | 'official'; device; for .pth files the import options
    (preset, heads, decoder_heads, norm_stats). An empty path builds an untrained model from
    `preset` (default 80x208p16x16), `size` (default base) and `seed` (default 0): only for
    testing the plumbing. A missing or unreadable checkpoint is a CheckpointError naming it.
    """
    if not isinstance(model_file_path, (str, os.PathLike)):
        raise TypeError(f"model_file_path {model_file_path!r}: expected the path (str or os.PathLike) of a specmae "
                        "checkpoint or run folder or an official .pth file, or '' for an untrained model")
    timestamps = options.pop("timestamps", "centre")
    device = options.pop("device", "cpu")
    if timestamps not in TIMESTAMP_MODES:
        raise ValueError(f"timestamps {timestamps!r}: allowed {TIMESTAMP_MODES}")
    if model_file_path == "":
        preset, size, seed = options.pop("preset", "80x208p16x16"), options.pop("size", "base"), options.pop("seed", 0)
        embed_options = {k: options.pop(k) for k in EMBED_OPTIONS if k in options}
        if options:
            raise TypeError(f"unknown options {sorted(options)} for an untrained model")
        log.warning("specmae.hear.load_model(''): untrained %s %s model, for testing only", size, preset)
        encoder = build_mae(model_config(preset, size), seed).encoder
        embedder = Embedder(encoder, FrontendConfig(), NormStats((-7.1,), (4.2,)), **embed_options)
    else:
        embedder = load(model_file_path, device, **options)
    return HearModel(embedder, timestamps).to(device)


def _check(audio: Tensor, model: HearModel) -> Clips:
    """The HEAR contract's shape, then the samples read as every entry point reads them; a 2-D
    tensor is (n_sounds, n_samples) whatever its shape (the contract fixes it)."""
    if not isinstance(audio, Tensor) or audio.ndim != 2:
        shape = f" of shape {tuple(audio.shape)}" if hasattr(audio, "shape") else ""
        what = "a tensor" if isinstance(audio, Tensor) else f"a {type(audio).__module__}.{type(audio).__name__}"
        raise AudioError(f"audio: {what}{shape}: {CONTRACT} ({model.sample_rate} Hz)")
    if audio.device != model.device:
        model.to(audio.device)
    return read_clips(audio, model.sample_rate, model.sample_rate, device=model.device, layout_fixed=True)


@torch.no_grad()  # not inference_mode: outputs must be usable in autograd
def get_scene_embeddings(audio: Tensor, model: HearModel) -> Tensor:
    """(n_sounds, n_samples) -> (n_sounds, scene_embedding_size) float32: mean of all frames."""
    return model.embed(_check(audio, model)).clip


@torch.no_grad()
def get_timestamp_embeddings(audio: Tensor, model: HearModel) -> tuple[Tensor, Tensor]:
    """(n_sounds, n_samples) -> (frames (n_sounds, n, D) float32, timestamps (n_sounds, n) ms float32)."""
    clips = _check(audio, model)
    n_sounds, n_samples = audio.shape
    out = model.embed(clips)
    frames, stamps = out.frames, out.timestamps[0]
    duration_ms = n_samples * 1000 / model.sample_rate
    if model.timestamp_mode == "official":
        step = n_samples / model.sample_rate / frames.shape[1] * 1000  # the wrapper's float64 arithmetic
        stamps = torch.tensor([i * step for i in range(frames.shape[1])], dtype=torch.float64)
    else:
        keep = max(1, int((stamps <= duration_ms).sum()))
        frames, stamps = frames[:, :keep], stamps[:keep]
        if stamps[-1] > duration_ms:  # a lone frame longer than the clip: the centre of its audio
            hop = model.frontend.cfg.hop_length
            stamps = torch.tensor([(n_samples // hop) * hop * 1000 / (2 * model.sample_rate)], dtype=torch.float64)
    return frames, stamps.float().expand(n_sounds, -1).contiguous().to(frames.device)
