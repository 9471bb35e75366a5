"""Masked autoencoder objective wrapped around a standalone `Encoder` (docs/architecture.md).

forward_encoder / forward_decoder / forward_loss follow the official MSM-MAE code step by
step, so that its checkpoints reproduce their original outputs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..masking import n_keep as count_visible
from ..masking import random_masking
from .presets import ModelConfig
from .vit import Block, Encoder, init_linear_and_norm, sincos_2d, sincos_flat


def patchify(x: Tensor, patch_f: int, patch_t: int) -> Tensor:
    """(B, 1, F, T) -> (B, N_F*N_T, pf*pt); inside a patch, frequency-major (p, q) order."""
    B, _, Fr, T = x.shape
    n_f, n_t = Fr // patch_f, T // patch_t
    x = x.reshape(B, n_f, patch_f, n_t, patch_t).permute(0, 1, 3, 2, 4)
    return x.reshape(B, n_f * n_t, patch_f * patch_t)


def unpatchify(patches: Tensor, grid: tuple[int, int], patch_f: int, patch_t: int) -> Tensor:
    """(B, N_F*N_T, pf*pt) -> (B, 1, F, T); inverse of `patchify`."""
    B = patches.shape[0]
    n_f, n_t = grid
    x = patches.reshape(B, n_f, n_t, patch_f, patch_t).permute(0, 1, 3, 2, 4)
    return x.reshape(B, 1, n_f * patch_f, n_t * patch_t)


def hidden_mask(ids_restore: Tensor, keep: int) -> Tensor:
    """ids_restore (B, L), the inverse of an ids_shuffle whose first `keep` patches are visible ->
    mask (B, L) float, 1 = masked (hidden from the encoder)."""
    mask = torch.ones(ids_restore.shape, device=ids_restore.device)
    mask[:, :keep] = 0
    return torch.gather(mask, 1, ids_restore)


class MaskedAutoencoder(nn.Module):
    """MAE for spectrograms: encoder on visible patches, light decoder on all, MSE on masked."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        enc, dec = cfg.encoder, cfg.decoder
        self.encoder = Encoder(enc)
        self.decoder_embed = nn.Linear(enc.dim, dec.dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec.dim))
        if dec.pos == "1d":
            table = sincos_flat(dec.dim, enc.num_patches, enc.use_cls)
        else:
            table = sincos_2d(dec.dim, enc.grid, enc.use_cls)
        self.register_buffer("decoder_pos_embed", table, persistent=False)
        self.decoder_blocks = nn.ModuleList(
            Block(dec.dim, dec.heads, dec.mlp_ratio, enc.qkv_bias, enc.norm_eps) for _ in range(dec.depth))
        self.decoder_norm = nn.LayerNorm(dec.dim, eps=enc.norm_eps)
        self.decoder_pred = nn.Linear(dec.dim, enc.patch_f * enc.patch_t)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in [self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred]:
            m.apply(init_linear_and_norm)

    def patchify(self, x: Tensor) -> Tensor:
        return patchify(x, self.cfg.encoder.patch_f, self.cfg.encoder.patch_t)

    def unpatchify(self, patches: Tensor) -> Tensor:
        enc = self.cfg.encoder
        return unpatchify(patches, enc.grid, enc.patch_f, enc.patch_t)

    def forward_encoder(self, x: Tensor, ids_shuffle: Tensor, n_keep: int) -> Tensor:
        """x: (B, 1, F, T); ids_shuffle: (B, L). Returns latent (B, [1+]n_keep, D).

        Visible tokens stay in ids_shuffle order (not position order), as in the official code.
        """
        return self.encoder(x, ids_keep=ids_shuffle[:, :n_keep])

    def forward_decoder(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """latent: (B, [1+]n_keep, D); ids_restore: (B, L). Returns predictions (B, L, pf*pt)."""
        x = self.decoder_embed(latent)
        B, L = ids_restore.shape
        prefix = self.encoder.num_prefix
        # Without CLS the official decoder still drops token 0, losing one visible patch.
        skip = 1 if prefix or self.cfg.decoder.official_no_cls_quirk else 0
        body = x[:, skip:]
        masked = self.mask_token.to(body.dtype).expand(B, L - body.shape[1], -1)
        body = torch.cat([body, masked], dim=1)
        # Put every token back at its patch position.
        body = torch.gather(body, 1, ids_restore[..., None].expand(-1, -1, body.shape[-1]))
        x = torch.cat([x[:, :1], body], dim=1) if prefix else body
        x = x + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_pred(self.decoder_norm(x))
        return x[:, prefix:]

    def forward_loss(self, x: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """Mean squared error over masked patches. x: (B, 1, F, T); pred: (B, L, pf*pt); mask: (B, L), 1 = masked."""
        target = self.patchify(x)
        if self.cfg.decoder.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        per_patch = ((pred.float() - target) ** 2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, x: Tensor, mask_ratio: float = 0.75, ids_shuffle: Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """x: (B, 1, F, T) normalised log-mel. ids_shuffle: (B, L) from a masking strategy
        (first n_keep visible), or None for random masking drawn from `generator`.

        Returns (loss, pred (B, L, pf*pt), mask (B, L) with 1 = masked).
        """
        enc = self.cfg.encoder
        keep = count_visible(enc.num_patches, mask_ratio)
        # Choose which patches the encoder sees.
        if ids_shuffle is None:
            ids_shuffle = random_masking(x, enc.grid, mask_ratio, generator)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        mask = hidden_mask(ids_restore, keep)
        # Encode the visible patches, decode every position, score the hidden ones.
        latent = self.forward_encoder(x, ids_shuffle, keep)
        pred = self.forward_decoder(latent, ids_restore)
        loss = self.forward_loss(x, pred, mask)
        return loss, pred, mask


def build_mae(cfg: ModelConfig, seed: int = 0) -> MaskedAutoencoder:
    """A MaskedAutoencoder initialised under torch seed `seed`, leaving the global RNG as it was:
    the same (cfg, seed) always gives the same weights (random-init baselines, imports, tests)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MaskedAutoencoder(cfg)
