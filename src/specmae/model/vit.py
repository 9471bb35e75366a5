"""Vision-Transformer encoder over log-mel spectrograms (docs/architecture.md).

Module and parameter names follow the official MSM-MAE / MAE code (patch_embed.proj,
blocks.{i}.attn.qkv, norm1, mlp.fc1 ...) so that importing official weights is a
renaming of prefixes, not a reshuffle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .presets import EncoderConfig


def sincos_1d(dim: int, positions: Tensor) -> Tensor:
    """MAE's 1-D table: [sin(pos * w_k), cos(pos * w_k)], w_k = 10000^(-k / (dim/2)). (P,) -> (P, dim)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(dim: int, grid: tuple[int, int], cls: bool) -> Tensor:
    """Fixed 2-D table over the (N_F, N_T) patch grid, row-major: (1, [1+]N_F*N_T, dim).

    First half of the channels encodes the time column, second half the frequency row,
    exactly as the official tables; a CLS row, when present, is zeros.
    """
    n_f, n_t = grid
    f_idx, t_idx = torch.meshgrid(torch.arange(n_f), torch.arange(n_t), indexing="ij")
    table = torch.cat([sincos_1d(dim // 2, t_idx.flatten()), sincos_1d(dim // 2, f_idx.flatten())], dim=1)
    return _with_cls_row(table, cls)


def sincos_flat(dim: int, length: int, cls: bool) -> Tensor:
    """Transformer sinusoid over the flat patch index (official decoder): (1, [1+]length, dim).

    angle = pos / 10000^(2*floor(j/2)/dim); even channels sin, odd channels cos.
    """
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    j = torch.arange(dim)
    angles = pos / 10000 ** (2 * torch.div(j, 2, rounding_mode="floor").to(torch.float64) / dim)
    table = torch.where(j % 2 == 0, angles.sin(), angles.cos())
    return _with_cls_row(table, cls)


def _with_cls_row(table: Tensor, cls: bool) -> Tensor:
    if cls:
        table = torch.cat([torch.zeros(1, table.shape[1], dtype=table.dtype), table], dim=0)
    return table.float().unsqueeze(0)


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Softmax attention, (B, nh, N, hs) -> (B, nh, N, hs).

    `scaled_dot_product_attention`, except in bf16 on the CPU: there the fused kernels are
    slower than two bf16 matmuls with an fp32 softmax between them, 1.6-2x in the forward and
    4-8x in the backward, for every sequence length this model sees (17 visible tokens in
    pre-training to 800 in a long chunk; benchmarks/README.md).
    """
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)                      # (B, nh, N, N)
        return torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype) @ v
    return F.scaled_dot_product_attention(q, k, v)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, qkv_bias: str = "full"):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias == "full")
        if qkv_bias == "kzero":
            # BEiT-style bias: learned for q and v, none for k (a k bias is softmax-invariant).
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def qkv_bias(self) -> Tensor | None:
        if self.qkv.bias is not None:
            return self.qkv.bias
        return torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        qkv = F.linear(x, self.qkv.weight, self.qkv_bias())
        q, k, v = qkv.view(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # (B, nh, N, hs)
        x = attention(q, k, v)                                                           # (B, nh, N, hs)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))

    def probs(self, x: Tensor) -> Tensor:
        """The attention probabilities `forward` applies, (B, N, C) -> (B, nh, N, N) float32, rows
        summing to 1. Computed apart (analysis only) so that `forward` keeps its fused kernel."""
        B, N, C = x.shape
        qkv = F.linear(x, self.qkv.weight, self.qkv_bias())
        q, k, _ = qkv.view(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # (B, nh, N, hs)
        scores = (q.float() * q.shape[-1] ** -0.5) @ k.float().transpose(-2, -1)         # (B, nh, N, N)
        return torch.softmax(scores, dim=-1)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def drop_path(x: Tensor, rate: float, training: bool) -> Tensor:
    """Stochastic depth on a residual branch x (B, N, D): in training, each sample's branch is
    dropped with probability `rate` and the kept ones scaled by 1 / (1 - rate); identity otherwise.
    Draws from the global torch generator (the fine-tuning recipe seeds it per micro-step)."""
    if rate == 0.0 or not training:
        return x
    keep = x.new_empty(x.shape[0], *(1,) * (x.ndim - 1)).bernoulli_(1.0 - rate)
    return x * keep / (1.0 - rate)


class Block(nn.Module):
    """Pre-norm transformer block; `drop_path` > 0 drops its residual branches in training."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, qkv_bias: str = "full",
                 eps: float = 1e-6, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = drop_path

    def forward(self, x: Tensor) -> Tensor:
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        patch = (cfg.patch_f, cfg.patch_t)
        self.proj = nn.Conv2d(1, cfg.dim, kernel_size=patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 1, F, T) -> (B, N_F*N_T, D), patches row-major over (frequency row, time column)."""
        return self.proj(x).flatten(2).transpose(1, 2)


class Encoder(nn.Module):
    """ViT encoder: patch embedding + fixed 2-D positions + [CLS] + blocks + LayerNorm.

    drop_path: stochastic-depth rate of the last block, rising linearly from 0 at the first
    (fine-tuning; 0 everywhere else, where the blocks are deterministic).
    """

    def __init__(self, cfg: EncoderConfig, drop_path: float = 0.0):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim)) if cfg.use_cls else None
        # Fixed table: rebuilt from the config, never stored in checkpoints.
        self.register_buffer("pos_embed", sincos_2d(cfg.dim, cfg.grid, cfg.use_cls), persistent=False)
        rates = torch.linspace(0, drop_path, cfg.depth).tolist()
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.norm_eps, rate) for rate in rates)
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # MAE initialisation: the patch projection like a Linear layer (xavier on its flattened
        # weight), xavier Linear weights with zero bias, tokens N(0, 0.02).
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)
        self.blocks.apply(init_linear_and_norm)
        init_linear_and_norm(self.norm)

    @property
    def num_prefix(self) -> int:
        return 1 if self.cls_token is not None else 0

    def embed(self, x: Tensor) -> Tensor:
        """(B, 1, F, T) normalised log-mel -> patch tokens with positions, no CLS: (B, L, D)."""
        return self.patch_embed(x) + self.pos_embed[:, self.num_prefix:]

    def tokens(self, x: Tensor, ids_keep: Tensor | None = None) -> Tensor:
        """The first block's input: (B, 1, F, T) -> (B, [1+]n, D), the kept patches and [CLS] first."""
        tokens = self.embed(x)
        if ids_keep is not None:
            tokens = torch.gather(tokens, 1, ids_keep[..., None].expand(-1, -1, tokens.shape[-1]))
        if self.cls_token is not None:
            cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
            tokens = torch.cat([cls, tokens], dim=1)
        return tokens

    def attention_maps(self, x: Tensor, ids_keep: Tensor | None = None, layer: int = -1) -> Tensor:
        """Self-attention probabilities of block `layer` (default the last), for analysis.

        x: (B, 1, F, T); ids_keep as in `forward`. Returns (B, nh, N, N) float32 with N = [1+]n
        tokens in `forward`'s order ([CLS] first); row i is where token i attends, summing to 1.
        """
        layer = range(len(self.blocks))[layer]
        tokens = self.tokens(x, ids_keep)
        for block in self.blocks[:layer]:
            tokens = block(tokens)
        target = self.blocks[layer]
        return target.attn.probs(target.norm1(tokens))

    def forward(self, x: Tensor, ids_keep: Tensor | None = None,
                return_layers: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Encode a (B, 1, F, T) batch.

        ids_keep: (B, n_keep) visible patch indices (MAE masking) or None for all patches.
        Returns the tokens after the final LayerNorm, (B, [1+]n, D) with CLS first when the
        model has one; with `return_layers`, also each block's raw residual output.
        """
        tokens = self.tokens(x, ids_keep)
        layers = []
        for block in self.blocks:
            tokens = block(tokens)
            if return_layers:
                layers.append(tokens)
        tokens = self.norm(tokens)
        return (tokens, layers) if return_layers else tokens


def init_linear_and_norm(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
