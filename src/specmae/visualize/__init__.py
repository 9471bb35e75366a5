"""Visual analysis of a checkpoint (docs/visualize.md): what the model reconstructs and where it attends.

    analysis.py  tensors: masks per strategy and pattern, reconstructions with the visible patches
                 pasted back, mask-ratio sweeps, last-layer attention maps (no matplotlib)
    figures.py   matplotlib figures of those, and the run's loss curve
    segments.py  audio in and out: model-width segments of a clip, log-mel back to WAV
    page.py      index.html gathering the figures and sounds
    report.py    visualize / visualize_clips: all of it for some audio (`specmae visualize`)
"""

from .analysis import Reconstruction, reconstruct, reconstruct_ids, sweep_steps
from .figures import plot_loss_curve, plot_reconstruction
from .report import VisualizeOptions, VisualizeSummary, visualize, visualize_clips

__all__ = ["Reconstruction", "VisualizeOptions", "VisualizeSummary", "plot_loss_curve", "plot_reconstruction",
           "reconstruct", "reconstruct_ids", "sweep_steps", "visualize", "visualize_clips"]
