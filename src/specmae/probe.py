"""Frozen-encoder evaluation with a shallow probe (design.md section 9)."""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

from . import synth
from .audio import FrontendConfig, LogMelFrontend
from .checkpoint import load_model
from .features import frame_features
from .mae import MaskedAutoencoder

log = logging.getLogger(__name__)


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 weight_decay: float = 1e-3, iterations: int = 300) -> float:
    """Accuracy of a multinomial logistic regression on standardised features (full-batch L-BFGS)."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    xs = torch.from_numpy((train_x - mean) / std).double()
    xt = torch.from_numpy((test_x - mean) / std).double()
    y = torch.from_numpy(train_y).long()
    n_classes = int(max(train_y.max(), test_y.max())) + 1
    layer = torch.nn.Linear(xs.shape[1], n_classes).double()
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    opt = torch.optim.LBFGS(layer.parameters(), max_iter=iterations, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(layer(xs), y) + weight_decay * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float((layer(xt).argmax(1).numpy() == test_y).mean())


@torch.no_grad()
def clip_embeddings(model: MaskedAutoencoder, lms: torch.Tensor, mean: float, std: float,
                    batch: int = 64) -> np.ndarray:
    """lms: (N, F, T>=width) un-normalised log-mel -> (N, N_F*D) time-mean of frame features."""
    width = model.cfg.encoder.n_frames
    out = []
    for i in range(0, len(lms), batch):
        x = ((lms[i:i + batch, :, :width] - mean) / std)[:, None]
        out.append(frame_features(model.encoder, x).mean(1))
    return torch.cat(out).numpy()


def builtin_comparison(checkpoint: str | os.PathLike, n_clips: int = 1000, seed: int = 10_000) -> dict:
    """Linear-probe accuracy on a held-out labelled built-in corpus (a seed never trained on),
    for the pre-trained encoder and for the same architecture randomly initialised."""
    model, config = load_model(checkpoint)
    mean, std = config["norm_stats"]
    waves, labels = synth.make_corpus(n_clips, seed=seed)
    with torch.no_grad():
        lms = LogMelFrontend(FrontendConfig.from_dict(config["frontend"]))(torch.from_numpy(waves))
    torch.manual_seed(seed)
    random_model = MaskedAutoencoder(model.cfg).eval()
    split = int(0.7 * n_clips)
    results = {}
    for name, m in [("pre-trained", model), ("random init", random_model)]:
        emb = clip_embeddings(m, lms, mean, std)
        results[name] = linear_probe(emb[:split], labels[:split], emb[split:], labels[split:])
        log.info("%s: linear-probe accuracy %.3f", name, results[name])
    results["chance"] = float(np.bincount(labels[split:]).max() / (n_clips - split))
    return results

