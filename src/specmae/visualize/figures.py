"""The figures: loss curve, masked reconstructions, mask-ratio sweep, attention maps.

Every spectrogram is drawn as the model sees it, normalised log-mel with frequency up and time
to the right, one pixel per log-mel value; visible patches are outlined in cyan. matplotlib is
an optional dependency (`pip install specmae[plots]`); it is imported here only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import Tensor

from ..files import save_png
from ..model.mae import MaskedAutoencoder
from ..model.presets import EncoderConfig
from .analysis import Reconstruction, reconstruct


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("plots need matplotlib: pip install 'specmae[plots]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_loss_curve(log_path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Training loss (log scale) and learning rate per step, from a run's log.jsonl."""
    plt = _pyplot()
    records = [json.loads(line) for line in Path(log_path).read_text().splitlines()]
    records = [r for r in records if "loss" in r]
    steps = [r["step"] for r in records]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(steps, [r["loss"] for r in records], lw=1, color="tab:blue", label="loss")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("masked-patch MSE", color="tab:blue")
    lr_ax = ax.twinx()
    lr_ax.plot(steps, [r["lr"] for r in records], lw=1, color="tab:orange")
    lr_ax.set_ylabel("learning rate", color="tab:orange")
    ax.set_title(f"pre-training loss ({len(records)} steps, last {records[-1]['loss']:.4f})")
    ax.grid(alpha=0.3)
    path = save_png(fig, out)
    return path


def _image(ax, img: Tensor, title: str, **kw) -> None:
    ax.imshow(img.cpu().numpy(), origin="lower", aspect="auto", interpolation="nearest", **kw)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def _outline(ax, mask: Tensor, enc: EncoderConfig, color: str = "cyan") -> None:
    """Outline the visible patches (mask (L,) == 0) on an axis showing one (F, T) spectrogram."""
    from matplotlib.patches import Rectangle

    n_t = enc.grid[1]
    for idx in (mask == 0).nonzero().flatten().tolist():
        f_row, t_col = divmod(idx, n_t)
        ax.add_patch(Rectangle((t_col * enc.patch_t - 0.5, f_row * enc.patch_f - 0.5),
                               enc.patch_t, enc.patch_f, fill=False, ec=color, lw=0.9))


def _padding(ax, real_frames: int | None, width: int) -> None:
    """A dashed line where the audio ends and the padding with silence begins."""
    if real_frames is not None and real_frames < width:
        ax.axvline(real_frames - 0.5, color="white", ls="--", lw=0.8)


def plot_rows(rows: list[tuple[str, Reconstruction, int]], enc: EncoderConfig, out: str | os.PathLike,
              title: str, real_frames: int | None = None) -> Path:
    """One row per (label, reconstruction, sample index): input, reconstruction (visible patches
    pasted back), per-pixel |error|, visible patches outlined; MSE over the masked patches in
    the reconstruction's title, RMS of the error over the whole input in the error's."""
    plt = _pyplot()
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
    fig.suptitle(f"{title} (cyan: visible patches; frequency up, time right)", fontsize=10)
    return save_png(fig, out)


def plot_sweep(steps: list[tuple[float, Reconstruction]], enc: EncoderConfig, out: str | os.PathLike,
               title: str, real_frames: int | None = None) -> Path:
    """Mask-ratio sweep of one clip: per step, reconstruction and |error| side by side."""
    plt = _pyplot()
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
    fig.suptitle(f"{title} (MSE over the masked patches; cyan: visible patches)", fontsize=10)
    return save_png(fig, out)


def plot_mse_curves(curves: list[tuple[str, list[tuple[float, int, float]]]], out: str | os.PathLike) -> Path:
    """MSE over the masked patches against mask ratio, one line per segment: [(label, [(ratio, visible, mse)])]."""
    plt = _pyplot()
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
    plt = _pyplot()
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
    """Rows: one clip each; columns: input, reconstruction, per-pixel RMS error; visible patches outlined.

    x: (B, 1, F, T) normalised log-mel (F = frequency, drawn bottom to top; T = time).
    """
    plt = _pyplot()

    model.eval()
    recon, mask, loss = reconstruct(model, x, mask_ratio, generator=generator)
    enc = model.cfg.encoder
    rows = x.shape[0]
    fig, axes = plt.subplots(rows, 3, figsize=(13, 2.2 * rows + 0.6), squeeze=False, layout="constrained")
    vmin, vmax = float(x.min()), float(x.max())
    for r in range(rows):
        err = (recon[r, 0] - x[r, 0]).abs()
        images = [(x[r, 0], "input"), (recon[r, 0], "reconstruction"), (err, "|error| (RMS %.3f)" % err.pow(2).mean().sqrt())]
        for c, (img, name) in enumerate(images):
            kw = dict(vmin=vmin, vmax=vmax, cmap="magma") if c < 2 else dict(vmin=0, cmap="viridis")
            _image(axes[r, c], img, (f"{titles[r]}: " if titles and c == 0 else "") + name, **kw)
            _outline(axes[r, c], mask[r], enc)
    note = "; per-patch normalised target, hidden patches drawn at their true mean and std" \
        if model.cfg.decoder.norm_pix_loss else ""
    fig.suptitle(f"masked reconstruction, mask ratio {mask_ratio:.2f}, loss {loss:.4f} "
                 f"(cyan: visible patches; frequency up, time right{note})", fontsize=10)
    path = save_png(fig, out)
    return path
