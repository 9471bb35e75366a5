"""specmae: self-supervised audio representations by Masked Spectrogram Modeling.

    import specmae
    model = specmae.load("runs/demo")                 # checkpoint, run folder or official .pth
    out = model.embed(waveform, sample_rate=44100)     # resampled here
    out.frames, out.timestamps, out.clip               # (N, D), (N,) ms, (D,)
"""

from .version import __version__  # noqa: F401

__all__ = ["Embedder", "Embeddings", "load"]


def __getattr__(name: str):
    # Loaded on first use, so that `import specmae` (and the CLI's start) stays light.
    if name in __all__:
        from . import features
        return getattr(features, name)
    raise AttributeError(f"module 'specmae' has no attribute {name!r}")
