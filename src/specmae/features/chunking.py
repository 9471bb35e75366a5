"""Long log-mels in, frame features out: cutting into encoder-width chunks and back (docs/architecture.md).

    normalised log-mel clips [(F, T_i)] --chunks of T frames, the last padded with 0,
      encoded `chunks_per_call` at a time--> tokens (n, [1+]N_F*N_T, D)
      --tokens_to_frames--> frames (ceil(T_i / p_t), N_F*D) per clip

Frame count. A frame is kept while it covers at least one real log-mel frame: ceil(T_lms / p_t),
which is the official count (its floor trim keeps partly padded frames). 10 s at 16 kHz:
1,001 log-mel frames -> 63 frames of 160 ms with 16-frame patches, 251 of 40 ms with 4-frame ones.

Timestamps (ms) are span centres computed from integers: log-mel frame k is centred on sample
k * hop, so frame i is centred at (i*p_t + (p_t - 1)/2) * hop / sr, i.e. 160*i + 75 ms for p_t = 16.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor

from ..model.vit import Encoder


def tokens_to_frames(tokens: Tensor, grid: tuple[int, int], num_prefix: int) -> Tensor:
    """(B, [1+]N_F*N_T, D) encoder tokens -> (B, N_T, N_F*D) frame features.

    Every frequency row of a time step is kept: feature index = f_row * D + d.
    """
    n_f, n_t = grid
    z = tokens[:, num_prefix:]
    B, _, D = z.shape
    return z.reshape(B, n_f, n_t, D).transpose(1, 2).reshape(B, n_t, n_f * D)


@torch.no_grad()
def frame_features(encoder: Encoder, x: Tensor) -> Tensor:
    """x: (B, 1, F, T) normalised log-mel of exactly the encoder's width -> (B, N_T, N_F*D)."""
    return tokens_to_frames(encoder(x), encoder.cfg.grid, encoder.num_prefix)


def num_frames(n_lms: int, patch_t: int) -> int:
    """Frame features of a clip of n_lms log-mel frames: those covering any real frame."""
    return -(-n_lms // patch_t)


def frame_timestamps(n: int, patch_t: int, hop: int, sample_rate: int) -> Tensor:
    """Centres in ms of frames 0..n-1, (n,) float64, exact: never a float step accumulated."""
    i = torch.arange(n, dtype=torch.int64)
    return ((2 * i * patch_t + patch_t - 1) * hop * 1000).double() / (2 * sample_rate)


def resolve_layers(layers: int | Sequence[int] | None, depth: int) -> list[int]:
    """None -> [last]; negative indices count from the end. Raises naming the allowed range."""
    chosen = [depth - 1] if layers is None else [layers] if isinstance(layers, int) else list(layers)
    if not chosen or any(not -depth <= int(l) < depth for l in chosen):
        raise ValueError(f"layers {layers!r}: the encoder has {depth} blocks, allowed 0..{depth - 1} "
                         f"(or -{depth}..-1 from the end)")
    return [int(l) % depth for l in chosen]


def encode_chunks(forward: Callable[..., object], encoder: Encoder, x: Tensor, layers: list[int],
                  layer_mode: str) -> Tensor:
    """x (N, 1, F, T) normalised chunks -> (N, N_T, D_out) features of the chosen layers.

    forward(x, return_layers) runs the encoder (in the chosen precision).
    """
    grid, prefix, last = encoder.cfg.grid, encoder.num_prefix, encoder.cfg.depth - 1
    if layers == [last]:
        return tokens_to_frames(forward(x, False), grid, prefix)
    final, blocks = forward(x, True)
    picked = [tokens_to_frames(final if l == last else blocks[l], grid, prefix) for l in layers]
    if layer_mode == "concat":
        return torch.cat(picked, dim=-1)
    return sum(picked[1:], picked[0]) / len(picked)


def windows(lms: Sequence[Tensor], width: int, per_call: int) -> Iterator[tuple[Tensor, list[tuple[int, int, int]]]]:
    """Normalised log-mel clips [(F, T_i)] -> their windows of `width` frames, at most `per_call` at a time.

    Window k of clip i holds frames [k*width, (k+1)*width); a clip has ceil(T_i / width) of them,
    the last padded with 0 (the corpus mean). Yields (x (n, 1, F, width), [(i, k, real frames)]),
    windows in clip order: the one cutting of long audio for embeddings and predictions.
    """
    plan = [(i, k) for i, x in enumerate(lms) for k in range(-(-x.shape[-1] // width))]
    for start in range(0, len(plan), per_call):
        group = plan[start:start + per_call]
        x = lms[0].new_zeros(len(group), 1, lms[0].shape[0], width)
        where = []
        for j, (i, k) in enumerate(group):
            piece = lms[i][:, k * width:(k + 1) * width]
            x[j, 0, :, :piece.shape[-1]] = piece
            where.append((i, k, piece.shape[-1]))
        yield x, where


def embed_normalised(run: Callable[[Tensor], Tensor], lms: Sequence[Tensor], width: int, patch_t: int,
                     chunks_per_call: int) -> list[Tensor]:
    """Normalised log-mel clips [(F, T_i)] -> frame features [(ceil(T_i / p_t), D_out)].

    The `windows` of all clips (chunks of `width` frames) are encoded `chunks_per_call` at a time
    by run: (n, 1, F, width) -> (n, N_T, D_out).
    """
    n_t = width // patch_t
    outs: list[Tensor | None] = [None] * len(lms)
    for x, where in windows(lms, width, chunks_per_call):
        feats = run(x)
        for j, (i, k, _) in enumerate(where):
            if outs[i] is None:
                outs[i] = feats.new_empty(-(-lms[i].shape[-1] // width) * n_t, feats.shape[-1])
            outs[i][k * n_t:(k + 1) * n_t] = feats[j]
    return [out[:num_frames(x.shape[-1], patch_t)] for out, x in zip(outs, lms)]
