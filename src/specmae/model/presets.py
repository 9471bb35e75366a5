"""Model configurations: encoder and decoder sizes, and the MSM-MAE input/patch presets.

An input preset is named `<F>x<T>p<pf>x<pt>` as in the official MSM-MAE run folders:
F mel bins, T frames, patches of pf bins by pt frames. The name is parsed here once;
after that the numbers live in the config, and checkpoints store the config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..schema import ConfigError, from_dict, to_dict

# Presets of the MSM-MAE paper. Other names of the same form also parse, provided the
# patch divides the input (docs/configuration.md).
INPUT_PRESETS = (
    "80x96p16x16", "80x208p16x16", "80x304p16x16", "80x400p16x16", "80x512p16x16",
    "80x200p16x8", "80x200p16x4", "80x208p8x16", "80x304p80x4",
)

# The one table of model sizes, name -> (width, depth, heads): the presets here, the CLI's --size and
# --decoder, and the heads of official weights of a known width (checkpoint/official.py).
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

def size_fields(part: str, name: str) -> dict[str, int]:
    """The fields a size sets: size_fields('encoder', 'base') -> {'dim': 768, 'depth': 12, 'heads': 12}.
    `part` is 'encoder' or 'decoder'; ConfigError for an unknown name."""
    sizes = ENCODER_SIZES if part == "encoder" else DECODER_SIZES
    if name not in sizes:
        raise ConfigError(f"unknown {part} size {name!r}: allowed {', '.join(sizes)}")
    return dict(zip(("dim", "depth", "heads"), sizes[name]))


def heads_of_width(part: str, width: int) -> int | None:
    """The heads of the encoder or decoder size of this width, None when no size has it."""
    sizes = ENCODER_SIZES if part == "encoder" else DECODER_SIZES
    return next((heads for dim, _, heads in sizes.values() if dim == width), None)


_PRESET_RE = re.compile(r"^(\d+)x(\d+)p(\d+)x(\d+)$")


def parse_preset(name: str) -> tuple[int, int, int, int]:
    """'80x208p16x16' -> (F, T, pf, pt) = (80, 208, 16, 16)."""
    m = _PRESET_RE.match(name.strip())
    if not m:
        raise ConfigError(
            f"unknown input preset {name!r}: expected <F>x<T>p<pf>x<pt>, "
            f"e.g. one of {', '.join(INPUT_PRESETS)}")
    n_mels, n_frames, patch_f, patch_t = map(int, m.groups())
    if min(n_mels, n_frames, patch_f, patch_t) <= 0:
        raise ConfigError(f"input preset {name!r}: every number must be positive")
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
            raise ConfigError(
                f"model.encoder.patch_f, patch_t: patch {self.patch_f}x{self.patch_t} does not divide the input "
                f"{self.n_mels}x{self.n_frames}: patch_f must divide F and patch_t must divide T")
        if self.dim % self.heads:
            raise ConfigError(f"model.encoder.dim: width {self.dim} is not divisible by {self.heads} heads")
        if self.dim % 4:
            raise ConfigError(f"model.encoder.dim: width {self.dim} must be a multiple of 4 for 2-D sin-cos positions")
        if self.qkv_bias not in QKV_BIAS_MODES:
            raise ConfigError(f"model.encoder.qkv_bias: {self.qkv_bias!r}, allowed {QKV_BIAS_MODES}")
        if min(self.depth, self.heads, self.dim) <= 0 or self.mlp_ratio <= 0:
            raise ConfigError(f"model.encoder: depth {self.depth}, heads {self.heads}, dim {self.dim} and "
                              f"mlp_ratio {self.mlp_ratio} must be positive")


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
            raise ConfigError(f"model.decoder.dim: width {self.dim} is not divisible by {self.heads} heads")
        if self.pos not in DECODER_POS_MODES:
            raise ConfigError(f"model.decoder.pos: {self.pos!r}, allowed {DECODER_POS_MODES}")
        if self.pos == "2d" and self.dim % 4:
            raise ConfigError(f"model.decoder.dim: width {self.dim} must be a multiple of 4 for 2-D positions")


@dataclass
class ModelConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)

    def validate(self) -> "ModelConfig":
        self.encoder.validate()
        self.decoder.validate()
        if self.decoder.official_no_cls_quirk and self.encoder.use_cls:
            raise ConfigError("model.decoder.official_no_cls_quirk: only applies to models without CLS token "
                              "(model.encoder.use_cls: false)")
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
    n_mels, n_frames, patch_f, patch_t = parse_preset(preset)
    enc = dict(n_mels=n_mels, n_frames=n_frames, patch_f=patch_f, patch_t=patch_t, **size_fields("encoder", size))
    dec = size_fields("decoder", decoder)
    for key, value in overrides.items():
        if key.startswith("decoder_"):
            dec[key[len("decoder_"):]] = value
        else:
            enc[key] = value
    return ModelConfig.from_dict(dict(encoder=enc, decoder=dec))
