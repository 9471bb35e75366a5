"""Figures of a run: loss curve and masked reconstruction.

matplotlib is an optional dependency (`pip install specmae[plots]`); it is imported here only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .files import save_png
from .model.mae import MaskedAutoencoder


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


@torch.no_grad()
def reconstruct(model: MaskedAutoencoder, x: torch.Tensor, mask_ratio: float,
                ids_shuffle: torch.Tensor | None = None, generator: torch.Generator | None = None):
    """x: (B, 1, F, T) normalised -> (reconstruction with visible patches pasted back, mask (B, L), loss).

    A model trained on per-patch normalised targets (norm_pix_loss) predicts each patch's shape,
    not its level: its predictions are drawn with the true patch's mean and std put back, as the
    MAE authors draw theirs, so that the figure compares like with like.
    """
    loss, pred, mask = model(x, mask_ratio, ids_shuffle=ids_shuffle, generator=generator)
    patches = model.patchify(x)
    pred = pred.float()
    if model.cfg.decoder.norm_pix_loss:
        pred = pred * (patches.var(dim=-1, keepdim=True) + 1e-6) ** 0.5 + patches.mean(dim=-1, keepdim=True)
    pasted = torch.where(mask[..., None].bool(), pred, patches)
    return model.unpatchify(pasted), mask, loss.item()


def plot_reconstruction(model: MaskedAutoencoder, x: torch.Tensor, out: str | os.PathLike,
                        mask_ratio: float = 0.75, generator: torch.Generator | None = None,
                        titles: list[str] | None = None) -> Path:
    """Rows: one clip each; columns: input, reconstruction, per-pixel RMS error; visible patches outlined.

    x: (B, 1, F, T) normalised log-mel (F = frequency, drawn bottom to top; T = time).
    """
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    model.eval()
    recon, mask, loss = reconstruct(model, x, mask_ratio, generator=generator)
    enc = model.cfg.encoder
    n_f, n_t = enc.grid
    rows = x.shape[0]
    fig, axes = plt.subplots(rows, 3, figsize=(13, 2.2 * rows + 0.6), squeeze=False)
    vmin, vmax = float(x.min()), float(x.max())
    for r in range(rows):
        err = (recon[r, 0] - x[r, 0]).abs()
        images = [(x[r, 0], "input"), (recon[r, 0], "reconstruction"), (err, "|error| (RMS %.3f)" % err.pow(2).mean().sqrt())]
        for c, (img, name) in enumerate(images):
            ax = axes[r, c]
            kw = dict(vmin=vmin, vmax=vmax, cmap="magma") if c < 2 else dict(vmin=0, cmap="viridis")
            ax.imshow(img.cpu().numpy(), origin="lower", aspect="auto", interpolation="nearest", **kw)
            ax.set_title((f"{titles[r]}: " if titles and c == 0 else "") + name, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            for idx in (mask[r] == 0).nonzero().flatten().tolist():
                f_row, t_col = divmod(idx, n_t)
                ax.add_patch(Rectangle((t_col * enc.patch_t - 0.5, f_row * enc.patch_f - 0.5),
                                       enc.patch_t, enc.patch_f, fill=False, ec="cyan", lw=0.9))
    note = "; per-patch normalised target, hidden patches drawn at their true mean and std" \
        if model.cfg.decoder.norm_pix_loss else ""
    fig.suptitle(f"masked reconstruction, mask ratio {mask_ratio:.2f}, loss {loss:.4f} "
                 f"(cyan: visible patches; frequency up, time right{note})", fontsize=10)
    path = save_png(fig, out)
    return path
