"""The figures: loss curve, masked reconstructions, mask-ratio sweep, attention maps.

Every spectrogram is drawn as the model sees it, normalised log-mel with frequency up and time
to the right, one pixel per log-mel value; visible patches are outlined in cyan. matplotlib is
an optional dependency (`pip install specmae[plots]`); it is imported here only.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..files import pyplot, read_jsonl, save_png
from ..model.mae import MaskedAutoencoder
from ..model.presets import EncoderConfig
from .analysis import Reconstruction, paste


def plot_loss_curve(log_path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Training loss (log scale) and learning rate from a run's log.jsonl: each loss record is the
    mean over the `train.log_every` steps before it (training/logs.py)."""
    plt = pyplot()
    records = [r for r in read_jsonl(log_path) if "loss" in r and "event" not in r]
    steps = [r["step"] for r in records]
    every = steps[1] - steps[0] if len(steps) > 1 else 1
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(steps, [r["loss"] for r in records], lw=1, color="tab:blue", label="loss")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("masked-patch MSE" + (f", mean of {every} steps" if every > 1 else ""), color="tab:blue")
    lr_ax = ax.twinx()
    lr_ax.plot(steps, [r["lr"] for r in records], lw=1, color="tab:orange")
    lr_ax.set_ylabel("learning rate", color="tab:orange")
    ax.set_title(f"pre-training loss ({steps[-1]} steps, last {records[-1]['loss']:.4f})")
    ax.grid(alpha=0.3)
    path = save_png(fig, out)
    return path


def _image(ax, img: Tensor, title: str, **kw) -> None:
    ax.imshow(img.cpu().numpy(), origin="lower", aspect="auto", interpolation="nearest", **kw)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def _outline(ax, mask: Tensor, enc: EncoderConfig, color: str = "cyan") -> None:
    """Outline the visible region (mask (L,) == 0) on an axis showing one (F, T) spectrogram: the
    edges between a visible patch and a hidden one (or the border), so that neighbouring visible
    patches read as one region and a grid of many small patches stays legible."""
    from matplotlib.collections import LineCollection

    n_f, n_t = enc.grid
    pf, pt = enc.patch_f, enc.patch_t
    visible = (mask == 0).reshape(n_f, n_t).cpu().numpy()
    padded = np.pad(visible, 1)                                             # (N_F + 2, N_T + 2), False outside
    segments = []
    for f, t in zip(*np.nonzero(visible)):
        x0, x1, y0, y1 = t * pt - 0.5, (t + 1) * pt - 0.5, f * pf - 0.5, (f + 1) * pf - 0.5
        if not padded[f, t + 1]:        # below
            segments.append([(x0, y0), (x1, y0)])
        if not padded[f + 1, t + 2]:    # right
            segments.append([(x1, y0), (x1, y1)])
        if not padded[f + 2, t + 1]:    # above
            segments.append([(x0, y1), (x1, y1)])
        if not padded[f + 1, t]:        # left
            segments.append([(x0, y0), (x0, y1)])
    ax.add_collection(LineCollection(segments, colors=color, linewidths=0.9))


def _padding(ax, real_frames: int | None, width: int) -> None:
    """A dashed line where the audio ends and the padding with silence begins."""
    if real_frames is not None and real_frames < width:
        ax.axvline(real_frames - 0.5, color="white", ls="--", lw=0.8)


def plot_rows(rows: list[tuple[str, Reconstruction, int]], enc: EncoderConfig, out: str | os.PathLike,
              title: str, real_frames: int | None = None, note: str = "") -> Path:
    """One row per (label, reconstruction, sample index): input, reconstruction (visible patches
    pasted back), per-pixel |error|, visible patches outlined; MSE over the masked patches in
    the reconstruction's title, RMS of the error over the whole input in the error's. `note` ends
    the figure's title (e.g. how a per-patch normalised prediction is drawn)."""
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), 3, figsize=(13, 2.2 * len(rows) + 0.6), squeeze=False, layout="constrained")
    for r, (label, rec, i) in enumerate(rows):
        x = rec.input[i, 0]
        vmin, vmax = float(x.min()), float(x.max())
        err = rec.error[i, 0]
        panels = [(x, f"{label}: input", dict(vmin=vmin, vmax=vmax, cmap="magma")),
                  (rec.output[i, 0], f"reconstruction, {rec.visible} visible, masked MSE {float(rec.mse[i]):.3f}",
                   dict(vmin=vmin, vmax=vmax, cmap="magma")),
                  (err, f"|error| (RMS {float(err.pow(2).mean().sqrt()):.3f})", dict(vmin=0, cmap="viridis"))]
        for c, (img, name, kw) in enumerate(panels):
            _image(axes[r, c], img, name, **kw)
            _outline(axes[r, c], rec.mask[i], enc)
            _padding(axes[r, c], real_frames, x.shape[-1])
    fig.suptitle(f"{title} (cyan: visible patches; frequency up, time right{note})", fontsize=10)
    return save_png(fig, out)


def plot_sweep(steps: list[tuple[float, Reconstruction]], enc: EncoderConfig, out: str | os.PathLike,
               title: str, real_frames: int | None = None, note: str = "") -> Path:
    """Mask-ratio sweep of one clip: per step, reconstruction and |error| side by side."""
    plt = pyplot()
    cols = 2
    n_rows = -(-len(steps) // cols)
    fig, axes = plt.subplots(n_rows, 2 * cols, figsize=(15, 1.9 * n_rows + 0.6), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    x = steps[0][1].input[0, 0]
    vmin, vmax = float(x.min()), float(x.max())
    err_max = max(float(rec.error[0, 0].max()) for _, rec in steps)
    for k, (ratio, rec) in enumerate(steps):
        r, c = divmod(k, cols)
        for j, (img, name, kw) in enumerate([
                (rec.output[0, 0], f"ratio {ratio:.3g}: {rec.visible} visible, MSE {float(rec.mse[0]):.3f}",
                 dict(vmin=vmin, vmax=vmax, cmap="magma")),
                (rec.error[0, 0], "|error|", dict(vmin=0, vmax=err_max, cmap="viridis"))]):
            ax = axes[r, 2 * c + j]
            ax.axis("on")
            _image(ax, img, name, **kw)
            _outline(ax, rec.mask[0], enc)
            _padding(ax, real_frames, x.shape[-1])
    fig.suptitle(f"{title} (MSE over the masked patches; cyan: visible patches{note})", fontsize=10)
    return save_png(fig, out)


def plot_mse_curves(curves: list[tuple[str, list[tuple[float, int, float]]]], out: str | os.PathLike) -> Path:
    """MSE over the masked patches against mask ratio, one line per segment: [(label, [(ratio, visible, mse)])]."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for label, points in curves:
        ax.plot([p[0] for p in points], [p[2] for p in points], marker="o", ms=3, lw=1, label=label)
    for ratio, visible, mse in curves[0][1]:
        if visible in (1, 2, 5, 10):
            ax.annotate(f"{visible}", (ratio, mse), textcoords="offset points", xytext=(0, 6), fontsize=7,
                        ha="center")
    ax.set_xlabel("mask ratio (numbers: visible patches)")
    ax.set_ylabel("MSE over masked patches")
    ax.set_title("reconstruction error against mask ratio")
    ax.grid(alpha=0.3)
    if len(curves) <= 12:
        ax.legend(fontsize=7)
    return save_png(fig, out)


def plot_attention(x: Tensor, maps: list[tuple[str, Tensor, tuple[int, int] | None]], enc: EncoderConfig,
                   out: str | os.PathLike, title: str, real_frames: int | None = None) -> Path:
    """Attention maps over the spectrogram x (F, T): per panel (title, (N_F, N_T) map, reference
    patch (t, f) or None for [CLS]), the map stretched over its patches, reference outlined."""
    plt = pyplot()
    from matplotlib.patches import Rectangle

    fig, axes = plt.subplots(len(maps), 1, figsize=(10, 2.6 * len(maps) + 0.6), squeeze=False, layout="constrained")
    F, T = x.shape
    for ax, (name, amap, ref) in zip(axes[:, 0], maps):
        _image(ax, x, name, cmap="gray")
        im = ax.imshow(amap.numpy(), origin="lower", aspect="auto", interpolation="nearest", cmap="inferno",
                       alpha=0.5, extent=(-0.5, T - 0.5, -0.5, F - 0.5), vmin=0)
        fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01)
        if ref is not None:
            ax.add_patch(Rectangle((ref[0] * enc.patch_t - 0.5, ref[1] * enc.patch_f - 0.5),
                                   enc.patch_t, enc.patch_f, fill=False, ec="cyan", lw=1.5))
        _padding(ax, real_frames, T)
    fig.suptitle(f"{title} (last-layer self-attention, mean over heads; cyan: reference patch)", fontsize=10)
    return save_png(fig, out)


def plot_reconstruction(model: MaskedAutoencoder, x: torch.Tensor, out: str | os.PathLike,
                        mask_ratio: float = 0.75, generator: torch.Generator | None = None,
                        titles: list[str] | None = None) -> Path:
    """Rows: one clip each; columns: input, reconstruction, per-pixel |error|; visible patches
    outlined. Random masks drawn from `generator`, as the model's own forward draws them.

    x: (B, 1, F, T) normalised log-mel (F = frequency, drawn bottom to top; T = time).
    """
    model.eval()
    enc = model.cfg.encoder
    with torch.no_grad():
        loss, pred, mask = model(x, mask_ratio, generator=generator)
    rec = paste(model, x, pred, mask)
    loss = loss.item()
    rows = [(titles[i] if titles else f"clip {i + 1}", rec, i) for i in range(x.shape[0])]
    note = "; hidden patches at their true mean and std" if model.cfg.decoder.norm_pix_loss else ""
    return plot_rows(rows, enc, out, f"masked reconstruction, mask ratio {mask_ratio:.2f}, loss {loss:.4f}",
                     note=note)
