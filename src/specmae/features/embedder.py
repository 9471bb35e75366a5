"""Frame and clip features from a frozen encoder, for audio of any length (docs/architecture.md).

    waveform (S,) --front-end (build_frontend)--> log-mel (F, T_lms) --normalise--> T-frame chunks
      --encoder on all patches--> frame features (ceil(T_lms / p_t), N_F*D) --time mean--> clip (N_F*D,)

Chunking is the official MSM-MAE runtime's, whose embeddings it reproduces, with one change:
a clip whose length is an exact multiple of T gets no extra chunk of pure padding (the official
code encodes one and trims it away). Every chunk of every clip in a call is encoded in groups of
bounded size, so working memory does not grow with the length of the audio.

Padding. The last chunk is filled with 0 in the *normalised* domain, as in the official runtime.
With the checkpoint's stored statistics (the default) 0 is the corpus mean, a constant: a clip's
embedding then never depends on its batch-mates, and a converted official model reproduces the
official wrapper whenever its batch statistics equal the stored ones. (Log-mel silence would be
the other candidate; it would move the features of the partly padded last frame away from the
official ones for no gain.) Per-batch normalisation ('batch') exists only to reproduce the
official wrapper: mean and unbiased std over every log-mel value of the call, no eps.

Memory per minute of 16 kHz audio: 3.8 MB of waveform, 1.9 MB of log-mel (twice, normalised),
and the output, 375 frames (p_t = 16) or 1,500 (p_t = 4) of N_F*D floats: 5.8 or 23 MB for ViT-B.
Beyond that the encoder's working set is that of one call of `chunks_per_call` chunks.

Compilation (`compile=True`): the full groups of chunks go through `torch.compile` with
inductor's weight freezing (weights become constants: bf16 casts folded, oneDNN weight packing,
fused epilogues), compiled once per precision for that one group shape; the last, partial group
of a call runs eagerly, so that no length ever triggers a recompilation or encodes padding.
The first call pays the compilation (about 20 s for ViT-B on 2 CPU cores); it pays off on long
jobs (`specmae embed --compile`). Needs a C++ compiler on the CPU.

Layers: index l in 0..depth-1 is block l's output; the last one is taken after the final
LayerNorm and the others before it (the official convention). Several layers are averaged
('mean') or concatenated along the feature axis ('concat').
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from ..audio import AudioError, FrontendConfig, build_frontend, read_clips
from ..audio.normalize import NormStats
from ..checkpoint.loader import Checkpoint
from .chunking import embed_normalised, encode_chunks, frame_timestamps, resolve_layers
from ..model.vit import Encoder

NORMALIZATIONS = ("stored", "batch")
LAYER_MODES = ("mean", "concat")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Keyword options of Embedder that load() and the evaluation runner pass through.
EMBED_OPTIONS = ("layers", "layer_mode", "normalization", "precision", "chunks_per_call", "compile")
# Tokens per encoder call: big enough to keep the matrix units busy, small enough that the
# activations of a block stay in cache on a CPU. Bounds the working memory of any length.
CHUNK_TOKENS = {"cpu": 2048, "cuda": 65536}


@dataclass
class Embeddings:
    """Output of `Embedder.embed`, on the model's device, float32 features.

    One clip (S,): frames (N, D), timestamps (N,), clip (D,). A batch (B, S): frames (B, N, D),
    timestamps (B, N), clip (B, D). A list of clips of different lengths: lists of frames and
    timestamps, clip (B, D). Timestamps are span centres in ms (float64).
    """
    frames: Tensor | list[Tensor]
    timestamps: Tensor | list[Tensor]
    clip: Tensor


class Embedder(nn.Module):
    """A frozen encoder with its front-end and normalisation: audio in, embeddings out.

    Eval mode, no gradients; runs on the device it is moved to (`.to("cuda")`).
    Options: layers / layer_mode (see module doc), normalization 'stored' | 'batch',
    precision 'fp32' | 'bf16' | 'fp16' (CUDA), chunks_per_call (default from CHUNK_TOKENS),
    compile (see module doc).
    """

    def __init__(self, encoder: Encoder, frontend: FrontendConfig, norm_stats: NormStats | Sequence, *,
                 layers: int | Sequence[int] | None = None, layer_mode: str = "mean",
                 normalization: str = "stored", precision: str = "fp32",
                 chunks_per_call: int | None = None, compile: bool = False, checkpoint: Checkpoint | None = None):
        super().__init__()
        if frontend.n_mels != encoder.cfg.n_mels:
            raise ValueError(f"front-end of {frontend.n_mels} mel bins for an encoder of input height "
                             f"{encoder.cfg.n_mels}: they must be equal")
        self.encoder = encoder
        self.frontend = build_frontend(frontend).to(next(encoder.parameters()).device)
        self.norm_stats = NormStats.parse(norm_stats).check_bins(frontend.n_mels)
        self.layers = resolve_layers(layers, encoder.cfg.depth)
        self.layer_mode, self.normalization, self.precision = layer_mode, normalization, precision
        self.chunks_per_call, self.compile = chunks_per_call, compile
        self.checkpoint = checkpoint  # what it was loaded from (typed config, path), if anything
        self.check_options()
        self._lowp: tuple[tuple, dict] | None = None
        self._compiled: dict[tuple, Callable] = {}
        self.eval()

    @property
    def device(self) -> torch.device:
        return self.frontend.window.device

    @property
    def sample_rate(self) -> int:
        return int(self.frontend.cfg.sample_rate)

    @property
    def embedding_size(self) -> int:
        """Width of a frame feature (and of the clip embedding)."""
        n_f, _ = self.encoder.cfg.grid
        d = n_f * self.encoder.cfg.dim
        return int(d * len(self.layers) if self.layer_mode == "concat" else d)

    @property
    def frame_hop_ms(self) -> float:
        """Time between frame features: p_t log-mel hops (160 ms for 16-frame patches)."""
        return self.encoder.cfg.patch_t * self.frontend.cfg.hop_length * 1000 / self.sample_rate

    @property
    def group_size(self) -> int:
        """Chunks per encoder call: chunks_per_call, by default CHUNK_TOKENS of the device's kind."""
        tokens = self.encoder.cfg.num_patches + self.encoder.num_prefix
        return self.chunks_per_call or max(1, CHUNK_TOKENS.get(self.device.type, 8192) // tokens)

    def timestamps(self, n: int) -> Tensor:
        cfg = self.frontend.cfg
        return frame_timestamps(n, self.encoder.cfg.patch_t, cfg.hop_length, cfg.sample_rate)

    def _forward_fn(self, precision: str, full_group: int | None = None) -> Callable[[Tensor, bool], object]:
        """forward(x, return_layers) in `precision`; compiled for groups of `full_group` chunks
        when the Embedder compiles."""
        dtype = PRECISIONS[precision]
        if dtype is torch.float16 and self.device.type != "cuda":
            raise ValueError("precision 'fp16' needs a CUDA device; use 'bf16' on a CPU")
        eager = self._eager_forward(dtype)
        if not self.compile or full_group is None:
            return eager
        # Frozen weights are constants of the compiled graph: recompile if they ever change.
        key = (dtype, self.device, tuple((id(p), p._version) for p in self.encoder.parameters()))
        if key not in self._compiled:
            self._compiled = {key: torch.compile(self.encoder, dynamic=False)}
        compiled = self._compiled[key]
        import torch._inductor.config as inductor_config

        def forward(x: Tensor, layers: bool):
            if x.shape[0] != full_group:
                return eager(x, layers)
            autocast = (torch.autocast(self.device.type, dtype=dtype) if dtype is not None
                        else contextlib.nullcontext())
            with inductor_config.patch(freezing=True), autocast:
                return compiled(x, return_layers=layers)
        return forward

    def _eager_forward(self, dtype: torch.dtype | None) -> Callable[[Tensor, bool], object]:
        if dtype is None:
            return lambda x, layers: self.encoder(x, return_layers=layers)
        # Matrices cast once and reused: autocast would re-cast every weight on every call,
        # which costs more than the matmuls themselves for a single short clip.
        weights = [(n, p) for n, p in self.encoder.named_parameters() if p.ndim >= 2]
        key = (dtype, self.device, tuple((id(p), p._version) for _, p in weights))
        if self._lowp is None or self._lowp[0] != key:
            self._lowp = (key, {n: p.detach().to(dtype) for n, p in weights})
        params, device_type = self._lowp[1], self.device.type

        def forward(x: Tensor, layers: bool):
            with torch.autocast(device_type, dtype=dtype):
                return torch.func.functional_call(self.encoder, params, (x,), {"return_layers": layers})
        return forward

    def _normalise(self, lms: Tensor | list[Tensor], names: list[str], normalization: str,
                   inplace: bool = False) -> list[Tensor]:
        """Log-mel (B, F, T) or [(F, T_i)] -> normalised [(F, T_i)]; raises naming a non-finite clip.

        inplace: overwrite `lms` (ours, not the caller's), so long audio holds one log-mel copy.
        """
        clips = list(lms.unbind(0)) if isinstance(lms, Tensor) else lms
        finite = torch.isfinite(torch.stack([x.sum() for x in clips])).tolist()  # NaN and inf propagate
        for ok, name in zip(finite, names):
            if not ok:
                raise AudioError(f"{name}: log-mel is not finite (samples far outside [-1, 1]?)")
        if normalization == "stored":
            return [self.norm_stats.apply(x, inplace) for x in clips]
        # The official wrapper: statistics of this call's whole batch, unbiased std, no eps.
        flat = lms if isinstance(lms, Tensor) else torch.cat([x.reshape(-1) for x in clips])
        mean, std = flat.mean(), flat.std()
        if not float(std) > 1e-3:  # a constant batch leaves only rounding noise in the float32 std
            raise ValueError(f"per-batch normalisation of {', '.join(names[:3])}: the log-mel is constant "
                             f"(silence?), its std is {float(std):.2g} ~ 0; use normalization='stored'")
        return [x.sub_(mean).div_(std) if inplace else (x - mean) / std for x in clips]

    def check_options(self, layers=None, layer_mode=None, normalization=None,
                      precision=None) -> tuple[list[int], str, str, str]:
        """Per-call options (None: the embedder's) -> (layers, layer_mode, normalization, precision),
        checked; ValueError naming the option and what is allowed."""
        chosen = (self.layers if layers is None else resolve_layers(layers, self.encoder.cfg.depth),
                  layer_mode or self.layer_mode, normalization or self.normalization, precision or self.precision)
        for name, value, allowed in [("layer_mode", chosen[1], LAYER_MODES),
                                     ("normalization", chosen[2], NORMALIZATIONS),
                                     ("precision", chosen[3], tuple(PRECISIONS))]:
            if value not in allowed:
                raise ValueError(f"{name} {value!r}: allowed {allowed}")
        if chosen[2] == "batch" and (self.frontend.cfg.kind != "msm-mae" or self.norm_stats.per_bin):
            raise ValueError(f"normalization 'batch' reproduces the official MSM-MAE wrapper (one mean and std "
                             f"per batch); this model uses the {self.frontend.cfg.kind} front-end with "
                             f"{'per-bin' if self.norm_stats.per_bin else 'global'} statistics: use 'stored'")
        return chosen

    @torch.no_grad()  # not inference_mode: outputs may feed a trained probe
    def embed(self, audio, sample_rate: int | None = None, *, names: Sequence[str] | None = None,
              layers: int | Sequence[int] | None = None, layer_mode: str | None = None,
              normalization: str | None = None, precision: str | None = None) -> Embeddings:
        """audio: samples (S,) or (B, S) (a 2-D input is always a batch), a list of clips of any
        lengths, or file paths (audio/inputs.py); sample_rate: the rate of samples (resampled here),
        None for files, which carry their own.

        Keyword options override the embedder's for this call; `names` label clips in errors.
        """
        options = self.check_options(layers, layer_mode, normalization, precision)
        read = read_clips(audio, sample_rate, self.sample_rate, names=names, device=self.device)
        clips, names, kind = read.waves, read.names, read.kind
        if all(c.shape == clips[0].shape for c in clips):  # one front-end call; no copy of a lone clip
            lms = self.frontend(clips[0][None] if len(clips) == 1 else torch.stack(clips))
        else:
            lms = [self.frontend(c) for c in clips]
        return self._embed_lms(lms, names, kind, *options, inplace=True)

    @torch.no_grad()
    def embed_lms(self, lms: Tensor | Sequence[Tensor], *, names: Sequence[str] | None = None,
                  layers: int | Sequence[int] | None = None, layer_mode: str | None = None,
                  normalization: str | None = None, precision: str | None = None) -> Embeddings:
        """Like `embed`, from log-mel as the checkpoint's front-end gives it (not normalised):
        (F, T), (B, F, T), or a list of (F, T_i), on the model's device."""
        options = self.check_options(layers, layer_mode, normalization, precision)
        kind = "list" if isinstance(lms, (list, tuple)) else "one" if lms.ndim == 2 else "batch"
        lms = list(lms) if kind == "list" else lms[None] if kind == "one" else lms
        names = list(names) if names is not None else [f"lms[{i}]" for i in range(len(lms))]
        return self._embed_lms(lms, names, kind, *options)

    def _embed_lms(self, lms, names: list[str], kind: str, layers: list[int], layer_mode: str,
                   normalization: str, precision: str, inplace: bool = False) -> Embeddings:
        enc = self.encoder.cfg
        forward = self._forward_fn(precision, self.group_size)
        frames = embed_normalised(lambda x: encode_chunks(forward, self.encoder, x, layers, layer_mode).float(),
                                  self._normalise(lms, names, normalization, inplace), enc.n_frames, enc.patch_t,
                                  self.group_size)
        if precision == "fp16" and not all(bool(torch.isfinite(f.sum())) for f in frames):
            raise FloatingPointError(f"non-finite embedding for {names} in fp16: use precision 'bf16' or 'fp32'")
        stamps = [self.timestamps(f.shape[0]) for f in frames]
        clip = torch.stack([f.mean(0) for f in frames])
        if kind == "one":
            return Embeddings(frames[0], stamps[0], clip[0])
        if kind == "batch":
            return Embeddings(torch.stack(frames), torch.stack(stamps), clip)
        return Embeddings(frames, stamps, clip)

    def forward(self, audio: Tensor) -> Tensor:
        """(B, S) audio at the model rate -> frame features (B, N, D)."""
        return self.embed(audio, self.sample_rate).frames

