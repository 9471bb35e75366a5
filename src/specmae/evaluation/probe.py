"""Shallow probes on frozen embeddings, as in the HEAR 2021 kit.

    embeddings (N, D) --standardise on train--> grid of heads x learning rates, trained together
      --early stopping on the validation metric, best epoch restored--> best config --> test scores

Heads: 'linear'; 'mlp1' / 'mlp2' = 1 or 2 hidden layers of `hidden` units, each
Linear -> BatchNorm -> Dropout -> ReLU (HEAR's order), then a Linear output. Adam (torch's
defaults), mini-batches of `batch_size` shuffled every epoch (cut into equal parts, so no tiny
last batch upsets BatchNorm). After every epoch each config is scored on the validation part
with the task metric; a config stops `patience` epochs after its last strict improvement (or at
`max_epochs`) and keeps its best epoch. The config with the best validation score wins (ties: the
first in grid order); its test score is the result.

Speed: the whole grid trains in lock-step over the same mini-batches (one shuffle, one gather
per batch), each config with its own head and fused Adam; a config that stops leaves the loop.
The cost is then the heads' own matrix products: about 0.3 s per config and epoch for 2,300
clips of 3,840-d features and a 1,024-wide hidden layer on 2 CPU cores in fp32. Precision 'auto'
(the default) autocasts them to bf16 where bf16 products are faster (GPUs; CPUs whose bf16
instructions measure >= 1.3x fp32, see native_bf16): 2.2-2.8x faster on FSDD on an AMD EPYC
(benchmarks/README.md); elsewhere it is fp32.
bf16 can pick another configuration where validation scores nearly tie, so reports record the
precision that ran, and 'fp32' is the choice for results compared across machines.
Everything is seeded (initialisation, shuffling, dropout) through explicit generators, so a run
is deterministic and never touches the global RNG.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .metrics import KINDS, score
from ..config import PROBE_HEADS, ProbeConfig

log = logging.getLogger(__name__)

class SeededDropout(nn.Module):
    """Dropout drawing its masks from its own generator, so that a head's training does not depend
    on the global RNG nor on the other heads of the grid."""

    def __init__(self, p: float, generator: torch.Generator):
        super().__init__()
        self.p, self.generator = p, generator

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.rand(x.shape, generator=self.generator, device=x.device) >= self.p
        return x * keep / (1 - self.p)


def make_head(head: str, d_in: int, n_out: int, hidden: int = 1024, dropout: float = 0.1, seed: int = 0,
              device: str | torch.device = "cpu") -> nn.Sequential:
    """(B, d_in) -> (B, n_out) logits. MLP layers: Linear -> BatchNorm -> Dropout -> ReLU (HEAR's
    order); weights Xavier-uniform (ReLU gain after a ReLU), biases zero, all from `seed`."""
    if head not in PROBE_HEADS:
        raise ValueError(f"probe head {head!r}: allowed {PROBE_HEADS}")
    init = torch.Generator().manual_seed(seed)
    drop = torch.Generator(device).manual_seed(seed + 1)
    layers, width = [], d_in
    with torch.random.fork_rng(devices=[]):  # nn.Linear's own initialisation draws from the global RNG
        for _ in range(PROBE_HEADS.index(head)):
            layers += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden), SeededDropout(dropout, drop), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, n_out))
    gain = 1.0
    for layer in layers:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight, gain=gain, generator=init)
            nn.init.zeros_(layer.bias)
            gain = nn.init.calculate_gain("relu")
    return nn.Sequential(*layers).to(device)


@dataclass
class GridPoint:
    head: str
    lr: float
    best_epoch: int = 0          # 1-based; 0 = never scored
    valid_score: float = float("-inf")
    epochs: int = 0              # epochs trained before it stopped


@dataclass
class ProbeResult:
    """The chosen config, its validation and test scores, and the test scores per clip."""
    metric: str
    test_score: float
    valid_score: float
    chosen: GridPoint
    grid: list[GridPoint]
    test_probs: np.ndarray            # (N_test, C)
    seconds: float
    head: nn.Module | None = None     # the chosen head (eval mode), on standardised features
    mean: np.ndarray | None = None    # (D,) the standardisation: head input = (x - mean) / std
    std: np.ndarray | None = None

    def to_dict(self) -> dict:
        def point(g: GridPoint) -> dict:  # a config that never scored has no finite validation score
            return {**asdict(g), "valid_score": g.valid_score if math.isfinite(g.valid_score) else None}
        return {"metric": self.metric, "test": self.test_score, "valid": self.valid_score,
                "chosen": point(self.chosen), "grid": [point(g) for g in self.grid], "seconds": round(self.seconds, 3)}


def standardisation(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) per feature of the training part, float64; constant features get std 1."""
    mean = train.mean(0, dtype=np.float64)
    std = train.std(0, dtype=np.float64)
    std[std < 1e-8] = 1.0
    return mean, std


def standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Scale every feature to zero mean and unit variance on the training part; constant
    features are only centred."""
    mean, std = standardisation(train)
    return [((a - mean) / std).astype(np.float32) for a in (train, *others)]


def _loss(logits: Tensor, y: Tensor, kind: str) -> Tensor:
    if kind == "multilabel":
        return F.binary_cross_entropy_with_logits(logits, y)
    return F.cross_entropy(logits, y)


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, kind: str, precision: str = "fp32", rows: int = 4096) -> np.ndarray:
    """Eval-mode class probabilities (softmax, or sigmoid for multi-label): (N, C) float64."""
    model.eval()
    out = []
    for part in x.split(rows):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(part).float()
        out.append(torch.sigmoid(logits) if kind == "multilabel" else torch.softmax(logits, dim=-1))
    return torch.cat(out).double().cpu().numpy()


def _adam(model: nn.Module, lr: float) -> torch.optim.Adam:
    """torch's Adam, fused (one pass over the weights per step) where this torch supports it."""
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    except (RuntimeError, TypeError):  # fused CPU Adam needs torch >= 2.4
        return torch.optim.Adam(model.parameters(), lr=lr)


def train_probe(x_train: np.ndarray, y_train: np.ndarray, x_valid: np.ndarray, y_valid: np.ndarray,
                x_test: np.ndarray, y_test: np.ndarray, *, kind: str, metric: str, n_classes: int,
                config: ProbeConfig | None = None, device: str | torch.device = "cpu") -> ProbeResult:
    """Standardise, train the grid, pick the config on validation, score it on test.

    x_*: (N_*, D) embeddings. y_*: (N_*,) class indices ('multiclass', 'binary') or (N_*, C) 0/1
    ('multilabel'). The metric must be defined on the validation and test parts.

    Every config is an independent head with its own Adam; they step in lock-step over the same
    shuffled mini-batches, so that one pass of the data serves them all, and a config's result is
    the same whether it is trained alone or in the grid.
    """
    device = torch.device(device)
    cfg = (config or ProbeConfig()).resolved(device)
    if kind not in KINDS:
        raise ValueError(f"task kind {kind!r}: allowed {KINDS}")
    started = time.perf_counter()
    for part in (y_valid, y_test):
        score(metric, part, np.full((len(part), n_classes), 1.0 / n_classes))  # raises where undefined
    x_tr, x_va, x_te = (torch.from_numpy(a).to(device) for a in standardise(x_train, x_valid, x_test))
    y_tr = torch.as_tensor(np.asarray(y_train)).to(device, torch.float32 if kind == "multilabel" else torch.long)
    grid = [GridPoint(h, lr) for h, lr in cfg.grid()]
    # One initialisation per head, shared by its learning rates: they differ only by the rate.
    heads = [make_head(g.head, x_tr.shape[1], n_classes, cfg.hidden, cfg.dropout,
                       cfg.seed * 100 + PROBE_HEADS.index(g.head), device) for g in grid]
    optims = [_adam(h, g.lr) for h, g in zip(heads, grid)]
    best: dict[int, dict[str, Tensor]] = {}
    active = list(range(len(grid)))
    order = torch.Generator(device).manual_seed(cfg.seed)
    n_batches = max(1, math.ceil(len(y_tr) / cfg.batch_size))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    for epoch in range(1, cfg.max_epochs + 1):
        for i in active:
            heads[i].train()
        for batch in torch.randperm(len(y_tr), generator=order, device=device).tensor_split(n_batches):
            xb, yb = x_tr[batch], y_tr[batch]
            for i in active:
                with autocast:
                    logits = heads[i](xb)
                _loss(logits.float(), yb, kind).backward()
                optims[i].step()
                optims[i].zero_grad(set_to_none=True)
        for i in list(active):
            g = grid[i]
            g.epochs = epoch
            value = score(metric, y_valid, predict(heads[i], x_va, kind, cfg.precision))
            if np.isfinite(value) and value > g.valid_score:
                g.valid_score, g.best_epoch = value, epoch
                best[i] = {k: v.detach().clone() for k, v in heads[i].state_dict().items()}
            if epoch - g.best_epoch >= cfg.patience:
                active.remove(i)
                heads[i] = optims[i] = None  # free its memory early
        if not active:
            break
    if not best:
        raise FloatingPointError("probe training diverged: no config reached a finite validation score")
    chosen_id = max(best, key=lambda i: (grid[i].valid_score, -i))
    chosen = grid[chosen_id]
    model = make_head(chosen.head, x_tr.shape[1], n_classes, cfg.hidden, cfg.dropout, device=device)
    model.load_state_dict(best[chosen_id])
    test_probs = predict(model, x_te, kind, cfg.precision)
    seconds = time.perf_counter() - started
    log.debug("probe: %s lr %g, epoch %d, valid %.4f (%.1f s)", chosen.head, chosen.lr, chosen.best_epoch,
              chosen.valid_score, seconds)
    return ProbeResult(metric, score(metric, y_test, test_probs), chosen.valid_score, chosen, grid,
                       test_probs, seconds, model, *standardisation(x_train))
