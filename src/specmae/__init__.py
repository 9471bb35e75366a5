"""specmae: self-supervised audio representations by Masked Spectrogram Modeling."""

__version__ = "0.1.0"
