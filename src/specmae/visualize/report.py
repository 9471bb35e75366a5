"""The visual analysis of a checkpoint on some audio: figures, WAV files and index.html.

    visualize(checkpoint, audio files, out)      `specmae visualize CKPT AUDIO... --out DIR`
    visualize_clips(checkpoint, [(name, wave)], out)   the same on waveforms in memory (the demo)

For each chosen model-width segment of each clip, into out/<NN-name>/segment-<k>/:

    masks-<strategy>.png   input / reconstruction / |error| for `draws` random draws of each
                           masking strategy the checkpoint's configuration allows
    patterns.png           vertical stripes, horizontal stripes, chessboard at ratio 0.5
    sweep.png              mask ratios 0.40-0.99 and exactly 1, 2, 5, 10 visible patches
    attention.png          last-layer attention, mean over heads, from the reference patches
    input.wav, input-mel.wav, recon-<strategy|pattern>.wav
                           the segment's audio, its log-mel inverted, and the reconstructions inverted

and out/mse-vs-ratio.png (every segment's sweep) and out/index.html. A checkpoint without a
decoder (fine-tuned classifier) gets the attention maps only. Deterministic for a seed.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from ..audio import AudioError, build_frontend, read_clips
from ..audio.stream import Clip, open_clip
from ..checkpoint import Checkpoint, load
from ..masking import PATTERNS
from ..model.mae import MaskedAutoencoder
from . import analysis, figures
from .page import Item, Section, write_index
from .segments import choose_segments, normalised, read_segment, to_audio, write_wav

log = logging.getLogger(__name__)

NO_DECODER = ("this checkpoint has no decoder (a fine-tuned or exported encoder): the reconstruction "
              "figures and sounds are skipped; the attention maps are drawn")


@dataclass
class VisualizeOptions:
    seed: int = 0                         # masks and Griffin-Lim phases
    draws: int = 3                        # random mask draws per strategy
    strategies: Sequence[str] | None = None   # None: every one the checkpoint allows (analysis.strategies)
    segments: str | list[int] = "loudest"     # 'loudest' | 'first' | 'all' | 0-based indices
    refs: Sequence[str] | None = None     # 'cls', 'loudest', 't,f'; None: cls (when present) and loudest
    patterns: bool = True
    sweep: bool = True
    sweep_ratios: Sequence[float] = analysis.SWEEP_RATIOS
    sweep_visible: Sequence[int] = analysis.SWEEP_VISIBLE   # steps leaving exactly this many patches visible
    audio: bool = True                    # WAV files
    griffin_lim_iters: int = 32
    max_seconds: float | None = 3 * 3600  # longest file read (a limit, not a memory guard: files are read in pieces)


@dataclass
class VisualizeSummary:
    index: Path
    segments: int = 0
    files: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)   # (input, reason)


def _slug(i: int, name: str) -> str:
    stem = Path(name).stem if os.sep in name or "." in name else name
    return f"{i + 1:02d}-" + (re.sub(r"[^A-Za-z0-9._+-]+", "-", stem).strip("-")[:60] or "clip")


def _failed(failed: list[tuple[str, str]], name: str, e: Exception) -> list:
    log.warning("skipped %s", e)
    failed.append((name, str(e)))
    return []


def _refs(options: VisualizeOptions, encoder) -> list:
    refs = [analysis.parse_ref(r) for r in options.refs] if options.refs else \
        (["cls"] if encoder.num_prefix else []) + ["loudest"]
    for ref in refs:
        analysis.check_ref(ref, encoder)
    return refs


def _check_options(options: VisualizeOptions, ck: Checkpoint) -> list[str]:
    """The strategies to draw; ValueError naming a bad option before any audio is read."""
    if options.draws < 1 or options.griffin_lim_iters < 1:
        raise ValueError(f"draws {options.draws} and griffin_lim_iters {options.griffin_lim_iters}: expected >= 1")
    grid = ck.model.encoder.cfg.grid
    allowed = analysis.strategies(ck.config.masking, grid)
    chosen = list(options.strategies) if options.strategies is not None else allowed
    for name in chosen:
        if name not in allowed:
            raise ValueError(f"--strategies {name}: not one this checkpoint's masking configuration allows on "
                             f"its {grid[0]}x{grid[1]} grid ({', '.join(allowed)})")
    return chosen


class _Run:
    """Everything one call draws, shared by its segments."""

    def __init__(self, ck: Checkpoint, out: Path, options: VisualizeOptions):
        self.ck, self.out, self.opt = ck, out, options
        self.model = ck.model.eval()
        self.encoder = self.model.encoder
        self.enc = self.encoder.cfg
        self.frontend = ck.config.frontend
        self.front = build_frontend(self.frontend)
        self.decoder = isinstance(self.model, MaskedAutoencoder)
        if not self.decoder:
            log.warning("%s: %s", ck.path, NO_DECODER)
        self.strategies = _check_options(options, ck)
        self.refs = _refs(options, self.encoder)
        self.curves: list[tuple[str, list[tuple[float, int, float]]]] = []
        self.files: list[Path] = []

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.opt.seed)

    def sound(self, section: Section, path: Path, wave: np.ndarray, caption: str) -> None:
        self.files.append(write_wav(path, wave, self.frontend.sample_rate))
        section.sounds.append(Item(path, caption))

    def recon_sound(self, section: Section, folder: Path, name: str, x: torch.Tensor, frames: int, what: str):
        if self.opt.audio:
            wave = to_audio(x, self.ck.norm_stats, self.frontend, frames, self.opt.griffin_lim_iters, self.opt.seed)
            self.sound(section, folder / f"recon-{name}.wav", wave, f"reconstruction, {what}")

    def figure(self, section: Section, path: Path, caption: str) -> None:
        self.files.append(path)
        section.figures.append(Item(path, caption))

    def segment(self, seg, folder: Path) -> Section:
        section = Section(seg.label())
        x = normalised(seg, self.ck.norm_stats)                                  # (1, 1, F, W)
        frames, ratio = seg.real_frames, self.ck.config.masking.ratio
        if seg.real_frames < self.enc.n_frames:
            section.notes.append(f"the audio ends after {seg.real_frames} of the model's {self.enc.n_frames} "
                                 "frames; the rest is silence (dashed line)")
        if self.opt.audio:
            self.sound(section, folder / "input.wav", seg.wave, "input (the segment's samples)")
            wave = to_audio(x[0, 0], self.ck.norm_stats, self.frontend, frames, self.opt.griffin_lim_iters,
                            self.opt.seed)
            self.sound(section, folder / "input-mel.wav", wave,
                       "input log-mel inverted (what mel inversion + Griffin-Lim alone keeps)")
        if self.decoder:
            self.reconstructions(section, folder, x, frames, ratio, seg.label(short=True))
        self.attention(section, folder, x, seg)
        return section

    def reconstructions(self, section: Section, folder: Path, x: torch.Tensor, frames: int, ratio: float,
                        label: str) -> None:
        draws = self.opt.draws
        # A model trained on per-patch normalised targets predicts each patch's shape, not its level.
        note = "; hidden patches at their true mean and std" if self.model.cfg.decoder.norm_pix_loss else ""
        for name in self.strategies:
            batch = x.expand(draws, -1, -1, -1)
            ids = analysis.strategy_ids(batch, self.encoder, self.ck.config.masking, name, self.generator())
            keep = int(ids.shape[1] * (1 - ratio))
            rec = analysis.reconstruct_ids(self.model, batch, ids, keep)
            unique = [i for i in range(draws) if not any(torch.equal(ids[i], ids[j]) for j in range(i))]
            path = figures.plot_rows([(f"{name} draw {i + 1}", rec, i) for i in unique], self.enc,
                                     folder / f"masks-{name}.png", f"{label}: {name} masking, ratio {ratio:g}",
                                     frames, note)
            same = f" ({draws - len(unique)} identical draws left out)" if len(unique) < draws else ""
            self.figure(section, path, f"{name} masking at the checkpoint's ratio {ratio:g} ({keep} of "
                                       f"{ids.shape[1]} patches visible), {len(unique)} draw(s){same}: input, "
                                       "reconstruction with the visible patches pasted back, per-pixel |error|.")
            self.recon_sound(section, folder, name, rec.output[0, 0], frames, f"{name} masking, draw 1")
        if self.opt.patterns:
            rows = []
            for pattern in PATTERNS:
                ids = analysis.pattern_ids(x, self.enc.grid, pattern, self.generator())
                rec = analysis.reconstruct_ids(self.model, x, ids, int(ids.shape[1] * 0.5))
                rows.append((analysis.PATTERN_NAMES[pattern], rec, 0))
                self.recon_sound(section, folder, pattern, rec.output[0, 0], frames, analysis.PATTERN_NAMES[pattern])
            path = figures.plot_rows(rows, self.enc, folder / "patterns.png", f"{label}: patterned masks, ratio 0.5",
                                     frames, note)
            self.figure(section, path, "Patterned masks at ratio 0.5: vertical stripes (every other time column "
                                       "visible), horizontal stripes (every other frequency row), chessboard. "
                                       "Where an odd number of rows or columns puts more than half of the "
                                       "patches in the pattern, a few random ones change side, so that exactly "
                                       "half (rounded down) are visible, as in pre-training with these patterns.")
        if self.opt.sweep:
            steps = analysis.sweep(self.model, x, self.generator(), analysis.sweep_steps(
                self.enc.num_patches, self.opt.sweep_ratios, self.opt.sweep_visible))
            path = figures.plot_sweep(steps, self.enc, folder / "sweep.png", f"{label}: mask-ratio sweep", frames,
                                      note)
            ratios = ", ".join(f"{r:g}" for r in self.opt.sweep_ratios)
            visible = ", ".join(str(k) for k in self.opt.sweep_visible)
            self.figure(section, path, f"Mask-ratio sweep: ratios {ratios} and exactly {visible} visible patches "
                                       f"(a step that would leave none of the {self.enc.num_patches} patches visible "
                                       "is left out); one random order for all steps, so each step's visible "
                                       "patches are a subset of the previous one's. MSE over the masked patches.")
            self.curves.append((label, [(r, rec.visible, float(rec.mse[0])) for r, rec in steps]))

    def attention(self, section: Section, folder: Path, x: torch.Tensor, seg) -> None:
        attn = analysis.attention(self.encoder, x)[0]                         # (N, N)
        maps, prefix = [], self.encoder.num_prefix
        for ref in self.refs:
            if ref == "loudest":   # in the un-normalised log-mel: per-bin statistics would favour quiet bins
                ref = analysis.loudest_patch(torch.from_numpy(seg.lms)[None, None], self.enc.grid)
            amap = analysis.attention_from(attn, ref, self.enc.grid, prefix)
            where = "[CLS]" if ref == "cls" else f"patch t={ref[0]}, f={ref[1]}"
            cls_share = f", {100 * (1 - float(amap.sum())):.0f} % on [CLS]" if prefix else ""
            maps.append((f"from {where}{cls_share}", amap, None if ref == "cls" else ref))
        path = figures.plot_attention(x[0, 0], maps, self.enc, folder / "attention.png", seg.label(short=True),
                                      seg.real_frames)
        self.figure(section, path, "Last-layer self-attention averaged over heads, from each reference (the [CLS] "
                                   "token or a patch, t = time column, f = frequency row, from 0) to every "
                                   "patch, over the input spectrogram.")


def visualize_clips(checkpoint: str | os.PathLike | Checkpoint, clips: Iterable[tuple[str, np.ndarray] | Clip],
                    out: str | os.PathLike, options: VisualizeOptions | None = None,
                    failed: list[tuple[str, str]] | None = None) -> VisualizeSummary:
    """Figures, WAVs and index.html for waveforms [(name, (S,) float samples at the checkpoint's rate,
    checked by audio.read_clips)] or clips (audio/stream.py, at the checkpoint's rate: files read in pieces).

    A clip that cannot be analysed (shorter than one patch, no such segment, a read that fails) is
    reported in the summary's `failed` and on the page; the others go on. `failed`: a list the
    clips' producer may also append to while it is iterated (files that did not open); the
    summary's is it. A clip failing after some of its segments were drawn keeps those.
    """
    options = options or VisualizeOptions()
    ck = checkpoint if isinstance(checkpoint, Checkpoint) else load(checkpoint)
    out = Path(out)
    run = _Run(ck, out, options)
    failed = failed if failed is not None else []
    sections, count = [], 0
    rate = run.frontend.sample_rate
    for i, clip in enumerate(clips):
        # One segment in memory at a time: the chosen ones are read (pass 2) as they are drawn.
        try:
            if not isinstance(clip, Clip):  # samples in memory: checked as every entry point's
                clip = Clip(clip[0], read_clips([clip[1]], rate, rate, names=[clip[0]]).waves[0].numpy(), rate)
            chosen, total = choose_segments(clip, run.front, run.enc.n_frames, run.enc.patch_t, options.segments)
        except (AudioError, ValueError) as e:
            chosen = _failed(failed, clip.name if isinstance(clip, Clip) else str(clip[0]), e)
        for k in chosen:
            try:
                seg = read_segment(clip, run.front, run.enc.n_frames, k, total)
            except (AudioError, ValueError) as e:
                _failed(failed, clip.name, e)
                break
            sections.append(run.segment(seg, out / _slug(i, clip.name) / f"segment-{k + 1}"))
            count += 1
    notes = [] if run.decoder else [NO_DECODER]
    if run.curves:
        run.files.append(figures.plot_mse_curves(run.curves, out / "mse-vs-ratio.png"))
        sections.insert(0, Section("Reconstruction error against mask ratio", figures=[Item(
            run.files[-1], "MSE over the masked patches against the mask ratio, one line per segment (numbers: "
                           "visible patches).")]))
    enc = run.enc
    intro = [f"checkpoint: {ck.path} (step {ck.step}); encoder {enc.n_mels}x{enc.n_frames} log-mel, "
             f"{enc.patch_f}x{enc.patch_t} patches ({enc.grid[0]}x{enc.grid[1]} grid), width {enc.dim}, depth "
             f"{enc.depth}, {'with' if enc.use_cls else 'without'} [CLS]; {ck.config.frontend.kind} front-end at "
             f"{ck.config.frontend.sample_rate} Hz, {'per-bin' if ck.norm_stats.per_bin else 'global'} statistics.",
             f"seed {options.seed}, {options.draws} draw(s) per strategy, segments: {options.segments}; "
             "spectrograms are normalised log-mel, frequency up, time right."]
    index = write_index(out, "specmae visual analysis", intro, sections, notes, failed)
    return VisualizeSummary(index, count, run.files + [index], failed)


def visualize(checkpoint: str | os.PathLike | Checkpoint, audio: Sequence[str | os.PathLike],
              out: str | os.PathLike, options: VisualizeOptions | None = None) -> VisualizeSummary:
    """`specmae visualize`: each file read in pieces at the checkpoint's rate and analysed (visualize_clips).

    Memory follows a block of audio (segments.BLOCK_SECONDS), not the file. A file that does not
    decode is reported and skipped; options are checked before any file is read.
    """
    options = options or VisualizeOptions()
    ck = checkpoint if isinstance(checkpoint, Checkpoint) else load(checkpoint)
    _check_options(options, ck)
    _refs(options, ck.model.encoder)
    rate = ck.config.frontend.sample_rate

    def clips():
        for path in audio:
            try:
                clip = open_clip(path, rate, max_seconds=options.max_seconds)
            except (AudioError, OSError, MemoryError) as e:
                log.warning("skipped %s", e)
                failed.append((str(path), str(e)))
                continue
            with clip:
                yield clip

    failed: list[tuple[str, str]] = []
    return visualize_clips(ck, clips(), out, options, failed)
