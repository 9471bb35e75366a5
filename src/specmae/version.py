"""The version of specmae, recorded in reports (here, below every module that writes one)."""

__version__ = "0.1.0"
