"""Model configurations: encoder and decoder sizes, and the MSM-MAE input/patch presets.

An input preset is named `<F>x<T>p<pf>x<pt>` as in the official MSM-MAE run folders:
F mel bins, T frames, patches of pf bins by pt frames. The name is parsed here once;
after that the numbers live in the config, and checkpoints store the config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..schema import from_dict, to_dict

# Presets of the MSM-MAE paper. Other names of the same form also parse, provided the
# patch divides the input (docs/configuration.md).
INPUT_PRESETS = (
    "80x96p16x16", "80x208p16x16", "80x304p16x16", "80x400p16x16", "80x512p16x16",
    "80x200p16x8", "80x200p16x4", "80x208p8x16", "80x304p80x4",
)

# name -> (width, depth, heads)
ENCODER_SIZES = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}
DECODER_SIZES = {
    "msm-mae": (384, 4, 6),
    "maskspec": (512, 8, 16),
}
QKV_BIAS_MODES = ("full", "kzero")
DECODER_POS_MODES = ("1d", "2d")

_PRESET_RE = re.compile(r"^(\d+)x(\d+)p(\d+)x(\d+)$")


def parse_preset(name: str) -> tuple[int, int, int, int]:
    """'80x208p16x16' -> (F, T, pf, pt) = (80, 208, 16, 16)."""
    m = _PRESET_RE.match(name.strip())
    if not m:
        raise ValueError(
            f"unknown input preset {name!r}: expected <F>x<T>p<pf>x<pt>, "
            f"e.g. one of {', '.join(INPUT_PRESETS)}")
    n_mels, n_frames, patch_f, patch_t = map(int, m.groups())
    if min(n_mels, n_frames, patch_f, patch_t) <= 0:
        raise ValueError(f"input preset {name!r}: every number must be positive")
    return n_mels, n_frames, patch_f, patch_t


@dataclass
class EncoderConfig:
    """ViT encoder over a (1, F, T) log-mel image cut into (patch_f, patch_t) patches."""
    n_mels: int = 80          # F, frequency axis
    n_frames: int = 208       # T, time axis
    patch_f: int = 16
    patch_t: int = 16
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    use_cls: bool = True
    qkv_bias: str = "kzero"   # 'kzero': learned q and v biases, key bias fixed at 0 (official MSM-MAE)
    norm_eps: float = 1e-6

    @property
    def preset(self) -> str:
        return f"{self.n_mels}x{self.n_frames}p{self.patch_f}x{self.patch_t}"

    @property
    def grid(self) -> tuple[int, int]:
        """(N_F, N_T): patch rows along frequency, patch columns along time."""
        return self.n_mels // self.patch_f, self.n_frames // self.patch_t

    @property
    def num_patches(self) -> int:
        n_f, n_t = self.grid
        return n_f * n_t

    def validate(self) -> None:
        if self.n_mels % self.patch_f or self.n_frames % self.patch_t:
            raise ValueError(
                f"patch {self.patch_f}x{self.patch_t} does not divide the input "
                f"{self.n_mels}x{self.n_frames}: patch_f must divide F and patch_t must divide T")
        if self.dim % self.heads:
            raise ValueError(f"encoder width {self.dim} is not divisible by {self.heads} heads")
        if self.dim % 4:
            raise ValueError(f"encoder width {self.dim} must be a multiple of 4 for 2-D sin-cos positions")
        if self.qkv_bias not in QKV_BIAS_MODES:
            raise ValueError(f"qkv_bias {self.qkv_bias!r}: allowed {QKV_BIAS_MODES}")
        if min(self.depth, self.heads, self.dim) <= 0 or self.mlp_ratio <= 0:
            raise ValueError("encoder depth, heads, width and mlp_ratio must be positive")


@dataclass
class DecoderConfig:
    """MAE decoder: Linear(D -> dim), mask token, blocks, LayerNorm, Linear(dim -> pf*pt)."""
    dim: int = 384
    depth: int = 4
    heads: int = 6
    mlp_ratio: float = 4.0
    pos: str = "1d"           # '1d': sinusoid over the flat patch index (official); '2d': sin-cos grid
    norm_pix_loss: bool = False
    # The official decoder always drops its first input token; without CLS that drops a
    # visible patch. Only for reproducing reconstructions of such official checkpoints.
    official_no_cls_quirk: bool = False

    def validate(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"decoder width {self.dim} is not divisible by {self.heads} heads")
        if self.pos not in DECODER_POS_MODES:
            raise ValueError(f"decoder pos {self.pos!r}: allowed {DECODER_POS_MODES}")
        if self.pos == "2d" and self.dim % 4:
            raise ValueError(f"decoder width {self.dim} must be a multiple of 4 for 2-D positions")


@dataclass
class ModelConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)

    def validate(self) -> "ModelConfig":
        self.encoder.validate()
        self.decoder.validate()
        if self.decoder.official_no_cls_quirk and self.encoder.use_cls:
            raise ValueError("official_no_cls_quirk only applies to models without CLS token")
        return self

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        return from_dict(cls, d, "model")


def model_config(preset: str = "80x208p16x16", size: str = "base", decoder: str = "msm-mae",
                 **overrides) -> ModelConfig:
    """Build a validated ModelConfig from names, e.g. model_config('80x512p16x16', 'base').

    `overrides` set encoder fields by name, or decoder fields with a `decoder_` prefix
    (decoder_pos='2d', decoder_norm_pix_loss=True).
    """
    if size not in ENCODER_SIZES:
        raise ValueError(f"unknown encoder size {size!r}: allowed {sorted(ENCODER_SIZES)}")
    if decoder not in DECODER_SIZES:
        raise ValueError(f"unknown decoder size {decoder!r}: allowed {sorted(DECODER_SIZES)}")
    n_mels, n_frames, patch_f, patch_t = parse_preset(preset)
    dim, depth, heads = ENCODER_SIZES[size]
    d_dim, d_depth, d_heads = DECODER_SIZES[decoder]
    enc = dict(n_mels=n_mels, n_frames=n_frames, patch_f=patch_f, patch_t=patch_t,
               dim=dim, depth=depth, heads=heads)
    dec = dict(dim=d_dim, depth=d_depth, heads=d_heads)
    for key, value in overrides.items():
        if key.startswith("decoder_"):
            dec[key[len("decoder_"):]] = value
        else:
            enc[key] = value
    return ModelConfig.from_dict(dict(encoder=enc, decoder=dec))
