"""Draw every masking strategy's masks on a few real and synthetic log-mel spectrograms.

    python benchmarks/plot_masks.py --out masks.png

Columns: FSDD spoken digits (8 kHz recordings resampled to 16 kHz) and clips of the built-in
synthetic corpus, each cropped or padded with silence to 208 frames (80x208p16x16, grid 5x13)
and normalised with the mean and std of the plotted clips. Rows: the input, then one row per
strategy with its masked patches greyed and hatched. Hinted strategies are drawn without hints
(hint ratio 0), so the strategy itself shows; sgim uses a randomly initialised tiny encoder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from specmae.audio import FrontendConfig, LogMelFrontend, load_audio  # noqa: E402
from specmae.masking import Masker, MaskingConfig, patch_dispersion  # noqa: E402
from specmae.model.presets import model_config  # noqa: E402
from specmae.audio.synth import CLASSES, make_corpus  # noqa: E402
from specmae.model.vit import Encoder  # noqa: E402

FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd" / "recordings"
RECORDINGS = ("9_theo_16.wav", "3_lucas_7.wav", "0_george_0.wav")
PRESET = "80x208p16x16"

ROWS = [  # (title, config)
    ("random", MaskingConfig("random")),
    ("dwm (MAD)", MaskingConfig("dwm", hint_ratio=0.0)),
    ("dwm top-k", MaskingConfig("dwm", topk=True, hint_ratio=0.0)),
    ("inverse-block", MaskingConfig("inverse-block", hint_ratio=0.0)),
    ("sgim (random-\ninit tiny ViT)", MaskingConfig("sgim", hint_ratio=0.0)),
    ("time-\nalternating", MaskingConfig("time-alternating", 0.5)),
    ("frequency-\nalternating", MaskingConfig("frequency-alternating", 0.5)),
    ("chessboard", MaskingConfig("chessboard", 0.5)),
    ("time-strip", MaskingConfig("time-strip")),
    ("row-column", MaskingConfig("row-column")),
]


def fit(lms: torch.Tensor, n_frames: int, silence: float) -> torch.Tensor:
    """(F, T') -> (F, n_frames): crop the start, or pad the end with silence (log eps)."""
    if lms.shape[1] >= n_frames:
        return lms[:, :n_frames]
    return torch.nn.functional.pad(lms, (0, n_frames - lms.shape[1]), value=silence)


def load_clips(recordings: list[Path], n_synth: int, seed: int, n_frames: int) -> tuple[torch.Tensor, list[str]]:
    """Returns normalised log-mel (B, 1, 80, n_frames) and a title per clip."""
    frontend = LogMelFrontend(FrontendConfig())
    silence = float(np.log(frontend.cfg.eps))
    lms, titles = [], []
    for path in recordings:
        wave = load_audio(path, frontend.cfg.sample_rate)
        lms.append(fit(frontend(torch.from_numpy(wave)), n_frames, silence))
        titles.append(f"FSDD {path.stem} ({len(wave) / frontend.cfg.sample_rate:.2f} s)")
    waves, labels = make_corpus(n_synth, seed)
    for wave, label in zip(waves, labels):
        lms.append(fit(frontend(torch.from_numpy(wave)), n_frames, silence))
        titles.append(f"synthetic: {CLASSES[label]}")
    x = torch.stack(lms)[:, None]
    return (x - x.mean()) / x.std(), titles


def draw(ax, image: np.ndarray, visible: np.ndarray, patch: tuple[int, int]) -> None:
    """image (F, T); visible (N_F, N_T) bool; frequency upwards."""
    ax.imshow(image, origin="lower", aspect="auto", cmap="magma", vmin=-2.5, vmax=2.5,
              interpolation="nearest")
    pf, pt = patch
    for f, t in zip(*np.nonzero(~visible)):
        ax.add_patch(Rectangle((t * pt - 0.5, f * pf - 0.5), pt, pf, facecolor=(0.6, 0.6, 0.6, 0.9),
                               edgecolor=(0.35, 0.35, 0.35), linewidth=0.4, hatch="///"))
    ax.set_xticks([])
    ax.set_yticks([])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="masks.png")
    p.add_argument("--recordings", nargs="*", default=[str(FSDD / r) for r in RECORDINGS])
    p.add_argument("--synthetic", type=int, default=2, help="clips from the synthetic corpus")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    cfg = model_config(PRESET, "tiny")
    enc = cfg.encoder
    torch.manual_seed(args.seed)
    encoder = Encoder(enc).eval()
    x, titles = load_clips([Path(r) for r in args.recordings], args.synthetic, args.seed, enc.n_frames)

    first = 2  # rows before the strategies: input, patch dispersion
    fig, axes = plt.subplots(len(ROWS) + first, len(titles),
                             figsize=(3.3 * len(titles), 1.45 * (len(ROWS) + first)), squeeze=False)
    mad = patch_dispersion(x, enc.grid, "mad").view(-1, *enc.grid)
    for col, title in enumerate(titles):
        draw(axes[0, col], x[col, 0].numpy(), np.ones(enc.grid, bool), (enc.patch_f, enc.patch_t))
        axes[0, col].set_title(title, fontsize=9)
        axes[1, col].imshow(mad[col].numpy(), origin="lower", aspect="auto", cmap="viridis",
                            vmin=0, vmax=float(mad.max()), interpolation="nearest")
        for (f, t), value in np.ndenumerate(mad[col].numpy()):
            axes[1, col].text(t, f, f"{value:.2f}", ha="center", va="center", fontsize=5.5,
                              color="white" if value < 0.6 * float(mad.max()) else "black")
        axes[1, col].set_xticks([])
        axes[1, col].set_yticks([])
    axes[0, 0].set_ylabel("input\n(normalised)", fontsize=8)
    axes[1, 0].set_ylabel("patch MAD\n(dwm weight)", fontsize=8)
    for row, (name, mcfg) in enumerate(ROWS, start=first):
        masker = Masker(mcfg, enc.grid, encoder=encoder)
        ids = masker(x, torch.Generator().manual_seed(args.seed + row))
        visible = torch.zeros(ids.shape, dtype=torch.bool).scatter_(1, ids[:, :masker.n_keep], True)
        for col in range(len(titles)):
            draw(axes[row, col], x[col, 0].numpy(), visible[col].view(enc.grid).numpy(),
                 (enc.patch_f, enc.patch_t))
        axes[row, 0].set_ylabel(f"{name}\nratio {mcfg.ratio}: {masker.n_keep}/{enc.num_patches} vis.",
                                fontsize=8)
    fig.suptitle(f"Masking strategies on {PRESET} (grid {enc.grid[0]}x{enc.grid[1]}): grey hatched = masked, "
                 "frequency up, time right; dwm / inverse-block / sgim without hints", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
