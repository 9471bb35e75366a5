"""Features for downstream use: frozen-encoder embeddings of audio of any length, and their jobs.

    embedder.py  Embedder (audio -> frame and clip features)
    chunking.py  long log-mels into encoder-width chunks and back into frames, timestamps
    embed.py     the `specmae embed` batch job
    predict.py   Predictor (a fine-tuned checkpoint's label probabilities), `specmae predict`, and `load`
                 (a checkpoint's Embedder, or its Predictor when fine-tuned)
    export.py    torch.export / TorchScript / ONNX export of the encoder
"""

from .embedder import EMBED_OPTIONS, Embedder, Embeddings
from .predict import load

__all__ = ["EMBED_OPTIONS", "Embedder", "Embeddings", "load"]
