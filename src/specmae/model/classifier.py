"""A classifier on a pre-trained encoder: the model that fine-tuning trains (docs/finetuning.md).

    x (B, 1, F, T) normalised log-mel --Encoder (positions adapted to T, Patchout in training)-->
      tokens (B, [1+]n, D) --time mean per frequency row (N_F*D), mean of the patch tokens (both over the
      columns that cover audio, not padding), or [CLS]--> (B, D')
      --LayerNorm--> --head--> logits (B, C)

The head is a Linear (fine-tuning's), or the MLP that a probe grid chose on the frozen features
(`head` 'mlp1' / 'mlp2', kept as checkpoints/probe): Linear -> ReLU per hidden layer, then a
Linear, with the probe's standardisation and eval-mode BatchNorm folded into its Linears.

The encoder is the pre-trained one, unchanged but for its input width: its fixed sin-cos
positional table is rebuilt for the pre-training width and then adapted to the fine-tuning one,
cropped to the first time columns for a shorter input (as MaskSpec does for 5-s ESC-50 clips) and
linearly interpolated along time for a longer one. The table is never stored: a checkpoint's
config (pre-training width + ClassifierConfig.n_frames) rebuilds it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..schema import ConfigError, non_negative, one_of, positive
from .presets import EncoderConfig
from .vit import Encoder, sincos_2d

POOLS = ("mean", "cls", "freq")
HEADS = ("linear", "mlp1", "mlp2")  # the probe's heads (evaluation/probe.py make_head): 0, 1, 2 hidden layers


@dataclass
class ClassifierConfig:
    """The classifier around the encoder; every default is MaskSpec's fine-tuning recipe."""
    pool: str = "mean"              # 'mean' of the patch tokens, the 'cls' token, or 'freq': the time mean
                                    # of each frequency row of (kept) patches, concatenated (N_F*D)
    n_frames: int | None = None     # input width T in log-mel frames; None = the pre-training width
    drop_path: float = 0.1          # stochastic depth of the last block (linear from 0 at the first)
    patchout: int = 0               # patch tokens dropped at random from each training input
    head_init_std: float = 2e-5     # truncated-normal std of the new head's weights
    head: str = "linear"            # 'linear', or a probe's MLP ('mlp1', 'mlp2': hidden layers of head_hidden)
    head_hidden: int = 1024
    pool_padding: bool = False      # also pool a short input's padding patches, as models fine-tuned
                                    # before pooling skipped them did (config.ADDED_SINCE)

    def validate(self) -> "ClassifierConfig":
        one_of("model.pool", self.pool, POOLS)
        one_of("model.head", self.head, HEADS)
        positive("model.head_hidden", self.head_hidden)
        positive("model.n_frames", self.n_frames, allow_none=True)
        non_negative("model.patchout", self.patchout)
        positive("model.head_init_std", self.head_init_std)
        if not 0.0 <= self.drop_path < 1.0:
            raise ConfigError(f"model.drop_path: {self.drop_path}, expected a rate in [0, 1)")
        return self

    def check_encoder(self, enc: EncoderConfig) -> EncoderConfig:
        """The encoder config at the fine-tuning width; ConfigError when this classifier cannot
        be built on `enc` (width not a whole number of patches, no CLS to pool, Patchout too big)."""
        width = self.n_frames or enc.n_frames
        if width % enc.patch_t:
            below = width // enc.patch_t * enc.patch_t
            raise ConfigError(
                f"model.n_frames: {width} frames is not a whole number of {enc.patch_t}-frame patches, so the "
                f"positional table cannot be adapted to it; use a multiple of {enc.patch_t}, e.g. "
                f"{below or enc.patch_t} or {below + enc.patch_t}")
        if self.pool == "cls" and not enc.use_cls:
            raise ConfigError("model.pool: 'cls', but the pre-trained encoder has no [CLS] token; use 'mean'")
        out = replace(enc, n_frames=width)
        if self.patchout >= out.num_patches:
            raise ConfigError(f"model.patchout: {self.patchout} of the {out.num_patches} patches of a "
                              f"{out.n_mels}x{width} input would leave none; use at most {out.num_patches - 1}")
        return out


def adapt_positions(table: Tensor, grid: tuple[int, int], n_t: int, prefix: int) -> Tensor:
    """A (1, [1+]N_F*N_T, D) positional table over grid (N_F, N_T) -> the table for N_F x n_t:
    the first n_t time columns when n_t <= N_T, else linearly interpolated along time (first and
    last columns kept). Prefix rows ([CLS]) stay as they are."""
    n_f, n_t_old = grid
    head, body = table[:, :prefix], table[:, prefix:]
    body = body.reshape(1, n_f, n_t_old, -1)                                     # (1, N_F, N_T, D)
    if n_t <= n_t_old:
        body = body[:, :, :n_t]
    else:
        body = F.interpolate(body.permute(0, 3, 1, 2), size=(n_f, n_t), mode="bilinear",
                             align_corners=True).permute(0, 2, 3, 1)             # (1, N_F, n_t, D)
    return torch.cat([head, body.reshape(1, n_f * n_t, -1)], dim=1)


def build_head(kind: str, width: int, hidden: int, n_classes: int) -> nn.Module:
    """(B, width) -> (B, C): a Linear, or HEADS.index(kind) hidden layers of Linear -> ReLU, then a Linear."""
    if kind == "linear":
        return nn.Linear(width, n_classes)
    layers = []
    for _ in range(HEADS.index(kind)):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, n_classes))


def fold_probe_head(layers: nn.Module, mean, std) -> list[tuple[Tensor, Tensor]]:
    """A probe head (make_head's Linear / BatchNorm1d / Dropout / ReLU layers, on features
    standardised as (x - mean) / std) -> the (weight, bias) of each of its Linears with the
    standardisation folded into the first and each eval-mode BatchNorm into the Linear before it,
    so that Linears and ReLUs alone give the head's eval-mode logits on raw features."""
    folded = []
    for layer in layers.modules():
        if isinstance(layer, nn.Linear):
            folded.append([layer.weight.detach().double().cpu(), layer.bias.detach().double().cpu()])
        elif isinstance(layer, nn.BatchNorm1d):  # eval mode: an affine map per unit
            scale = layer.weight.detach().double().cpu() / (layer.running_var.double().cpu() + layer.eps).sqrt()
            shift = layer.bias.detach().double().cpu() - scale * layer.running_mean.double().cpu()
            weight, bias = folded[-1]
            folded[-1] = [weight * scale[:, None], bias * scale + shift]
    std, mean = torch.as_tensor(std, dtype=torch.float64), torch.as_tensor(mean, dtype=torch.float64)
    weight, bias = folded[0]
    folded[0] = [weight / std, bias - (weight / std) @ mean]
    return [(w.float(), b.float()) for w, b in folded]


class Classifier(nn.Module):
    """Encoder + pooling + LayerNorm + head: (B, 1, F, T) normalised log-mel -> logits (B, C).

    encoder_cfg: the pre-trained encoder's config (its n_frames is the pre-training width).
    """

    def __init__(self, encoder_cfg: EncoderConfig, n_classes: int, cfg: ClassifierConfig | None = None):
        super().__init__()
        cfg = (cfg or ClassifierConfig()).validate()
        if n_classes < 1:
            raise ConfigError(f"a classifier needs at least one class, got {n_classes}")
        self.cfg, self.n_classes = cfg, n_classes
        enc = cfg.check_encoder(encoder_cfg)
        self.encoder = Encoder(enc, drop_path=cfg.drop_path)
        self.encoder.pos_embed = adapt_positions(sincos_2d(enc.dim, encoder_cfg.grid, enc.use_cls),
                                                 encoder_cfg.grid, enc.grid[1], self.encoder.num_prefix)
        width = enc.dim * (enc.grid[0] if cfg.pool == "freq" else 1)
        self.head_norm = nn.LayerNorm(width, eps=enc.norm_eps)
        self.head = build_head(cfg.head, width, cfg.head_hidden, n_classes)
        # A near-zero head starts every class at the same score, so the first steps move the
        # head, not the pre-trained encoder through large random gradients (MAE fine-tuning).
        nn.init.trunc_normal_(self.linears[-1].weight, std=cfg.head_init_std)
        nn.init.zeros_(self.linears[-1].bias)

    @property
    def linears(self) -> list[nn.Linear]:
        """The head's Linear layers, input first."""
        return [m for m in self.head.modules() if isinstance(m, nn.Linear)]

    @torch.no_grad()
    def load_probe_head(self, layers: nn.Module, mean, std) -> None:
        """Set the head to a probe head trained on standardised head inputs (see fold_probe_head):
        the classifier then gives that probe's eval-mode logits. The probe's kind and widths must be
        this head's."""
        folded = fold_probe_head(layers, mean, std)
        shapes = [tuple(m.weight.shape) for m in self.linears]
        if [tuple(w.shape) for w, _ in folded] != shapes:
            raise ValueError(f"a probe head of Linears {[tuple(w.shape) for w, _ in folded]} does not fit this "
                             f"classifier's {self.cfg.head} head of Linears {shapes}")
        for layer, (weight, bias) in zip(self.linears, folded):
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)

    @property
    def input_shape(self) -> tuple[int, int]:
        """(F, T) of one input."""
        return self.encoder.cfg.n_mels, self.encoder.cfg.n_frames

    def patchout_ids(self, batch: int, generator: torch.Generator | None) -> Tensor:
        """(B, L - patchout) indices of the patches kept, drawn independently per sample and in
        position order."""
        L = self.encoder.cfg.num_patches
        noise = torch.rand(batch, L, generator=generator, device=self.head_norm.weight.device)
        return noise.argsort(dim=1)[:, :L - self.cfg.patchout].sort(dim=1).values

    def features(self, x: Tensor, generator: torch.Generator | None = None, real: Tensor | None = None) -> Tensor:
        """x: (B, 1, F, T) normalised log-mel -> the head's input (B, D): pooled, LayerNorm'd.

        real: (B,) frames of each input that are audio, the rest padding (None: all T). The
        pooling reads the patch columns that cover a real frame, as the frozen clip embedding does
        (features/chunking.num_frames), so a short clip's features do not depend on how much
        padding surrounds it; the padding still passes through the encoder, as at embedding.
        In training mode, `patchout` random patch tokens of each sample are dropped (drawn from
        `generator`); in eval mode none."""
        ids_keep = None
        if self.training and self.cfg.patchout:
            ids_keep = self.patchout_ids(x.shape[0], generator)
        tokens = self.encoder(x, ids_keep=ids_keep)                                # (B, [1+]n, D)
        if self.cfg.pool == "cls":
            return self.head_norm(tokens[:, 0])                                    # (B, D)
        n_f, n_t = self.encoder.cfg.grid
        patches = tokens[:, self.encoder.num_prefix:]                              # (B, n, D)
        ids = ids_keep if ids_keep is not None else torch.arange(n_f * n_t, device=x.device).expand(len(x), -1)
        weight = torch.ones(ids.shape, dtype=patches.dtype, device=x.device)      # (B, n): 1 = pooled
        if real is not None and not self.cfg.pool_padding:
            columns = (real.to(x.device) + self.encoder.cfg.patch_t - 1) // self.encoder.cfg.patch_t
            weight = weight * (ids % n_t < columns.clamp(min=1)[:, None])
        if self.cfg.pool == "freq":  # patches in (N_F, N_T) order, as the frozen embeddings read them
            rows = (ids // n_t)[..., None]                                         # (B, n, 1): each patch's row
            sums = patches.new_zeros(len(x), n_f, patches.shape[-1]).scatter_add_(
                1, rows.expand_as(patches), patches * weight[..., None])
            counts = patches.new_zeros(len(x), n_f, 1).scatter_add_(1, rows, weight[..., None])
            pooled = (sums / counts.clamp(min=1)).flatten(1)                       # (B, N_F*D)
        else:
            pooled = (patches * weight[..., None]).sum(1) / weight.sum(1, keepdim=True).clamp(min=1)  # (B, D)
        return self.head_norm(pooled)

    def forward(self, x: Tensor, generator: torch.Generator | None = None, real: Tensor | None = None) -> Tensor:
        """x: (B, 1, F, T) normalised log-mel -> logits (B, C); see `features`."""
        return self.head(self.features(x, generator, real))
