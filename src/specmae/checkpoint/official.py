"""Import of official MSM-MAE and M2D weights (docs/checkpoints.md).

Official MSM-MAE `checkpoint-<epoch>.pth` files (k-bias-zero blocks with q_bias / v_bias,
optional CLS, 1-D decoder positions) and M2D files (full qkv bias, `norm_stats`, often
encoder-only) are read with torch.load(weights_only=True) and mapped key by key. Heads are
not in the shapes: they come from the width or from the caller.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import pickle
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..outputs import claim
from .store import CheckpointError, save_checkpoint

ENCODER_KEYS = ("cls_token", "patch_embed.", "blocks.", "norm.")
FIXED_TABLES = ("pos_embed", "decoder_pos_embed")
DECODER_KEYS = ("decoder_", "mask_token")
KEY_PREFIXES = ("module.ar.runtime.backbone.", "module.")  # EVAR fine-tuning, DDP
RUN_NAME = re.compile(r"(\d+x\d+p\d+x\d+)(p32k)?")  # '80x208p16x16_tag', 'm2d_vit_base-80x608p16x16p32k-...'
AUDIOSET_NORM_STATS = (-7.1, 4.2)
WEIGHT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors")


def from_official_state_dict(official: dict, model: torch.nn.Module, atol: float = 1e-5,
                             missing_ok: tuple[str, ...] = ()) -> dict:
    """Map an official MSM-MAE state dict onto `model` (a MaskedAutoencoder) key by key.

    Encoder keys gain the `encoder.` prefix; the fixed positional tables are not stored by
    specmae, so they are checked against the ones the config rebuilds instead. Raises
    CheckpointError listing every missing or unexpected key; keys of `model` starting with a
    `missing_ok` prefix may be absent (they are then not in the result).
    """
    ours = model.state_dict()
    mapped, problems = {}, []
    for key, value in official.items():
        if key in FIXED_TABLES:
            expected = model.encoder.pos_embed if key == "pos_embed" else model.decoder_pos_embed
            if tuple(value.shape) != tuple(expected.shape):
                problems.append(f"{key}: shape {tuple(value.shape)} but the config gives {tuple(expected.shape)}")
            elif not torch.allclose(value.float(), expected, atol=atol):
                problems.append(f"{key}: not the fixed sin-cos table this config rebuilds")
            continue
        name = f"encoder.{key}" if key.startswith(ENCODER_KEYS) else key
        if name not in ours:
            problems.append(f"unexpected key {key}")
        elif tuple(ours[name].shape) != tuple(value.shape):
            problems.append(f"{key}: shape {tuple(value.shape)}, expected {tuple(ours[name].shape)}")
        else:
            mapped[name] = value
    problems += [f"missing key {k}" for k in ours if k not in mapped and not k.startswith(missing_ok)]
    if problems:
        raise CheckpointError("official weights do not fit the model:\n  " + "\n  ".join(problems))
    return mapped


def is_foreign_weights(path: str | os.PathLike) -> bool:
    """A single weights file (.pth, .pt, .ckpt, .bin, .safetensors), not a specmae checkpoint."""
    path = Path(path)
    return path.is_file() and path.suffix in WEIGHT_SUFFIXES


def read_foreign_weights(path: str | os.PathLike) -> tuple[dict, dict]:
    """-> (state dict with wrapper prefixes removed, extras {'epoch', 'norm_stats'?}).

    Only tensors and plain containers are unpickled (plus argparse.Namespace, the `args` of
    official training checkpoints); a file holding anything else is refused, never executed.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, expected an official weights file ({', '.join(WEIGHT_SUFFIXES)})")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        if path.suffix == ".safetensors":
            obj = load_file(str(path))
        else:
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch and zipfile raise many types for foreign or truncated files
        lines = [s.strip() for s in str(e).splitlines() if s.strip()] or [type(e).__name__]
        code = [s for s in lines if "global" in s.lower()]
        if isinstance(e, pickle.UnpicklingError) and code:
            raise CheckpointError(f"{path}: refused: it holds pickled Python objects that could run code "
                                  f"when loaded; only tensors are read ({code[0]})") from e
        raise CheckpointError(f"{path}: not a readable weights file (truncated, or of another kind: "
                              f"{lines[-1][:200]})") from e
    state = obj
    if isinstance(obj, dict):
        state = next((obj[k] for k in ("model", "state_dict") if isinstance(obj.get(k), dict)), obj)
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, expected a state dict "
                              "(a dict of tensors, or one under 'model')")
    state = dict(state)
    stats = state.pop("norm_stats", None)
    if stats is None and isinstance(obj, dict):
        stats = obj.get("norm_stats")
    extras = {"epoch": obj.get("epoch") if isinstance(obj, dict) else None}
    if stats is not None:
        stats = [float(v) for v in torch.as_tensor(stats).flatten()]
        if len(stats) != 2:
            raise CheckpointError(f"{path}: norm_stats {stats}: expected [mean, std]")
        extras["norm_stats"] = stats
    out = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        prefix = next((p for p in KEY_PREFIXES if key.startswith(p)), "")
        out[key[len(prefix):]] = value
    return out, extras


def _depth(state: dict, prefix: str) -> int:
    return 1 + max((int(k.split(".")[1]) for k in state if k.startswith(prefix)), default=-1)


def official_config(state: dict, name: str = "", preset: str | None = None, heads: int | None = None,
                    decoder_heads: int | None = None, norm_pix_loss: bool = False,
                    official_no_cls_quirk: bool = False):
    """Rebuild (ModelConfig, FrontendConfig, notes, has_mae_decoder) from key names and shapes.

    Input and patch size: `preset`, else the run-folder name inside `name`, else the encoder's
    positional table assuming 80 mel bins. Heads: the arguments, else those of the model size of that
    width (model/presets.py: ENCODER_SIZES, DECODER_SIZES).
    """
    from ..audio import FrontendConfig
    from ..model.presets import (DECODER_SIZES, ENCODER_SIZES, DecoderConfig, EncoderConfig, ModelConfig,
                                 heads_of_width, parse_preset)
    from ..schema import ConfigError
    from ..model.vit import sincos_2d

    def need(key: str) -> torch.Tensor:
        if key not in state:
            raise CheckpointError(f"{name}: no {key}: not an MSM-MAE or M2D ViT state dict")
        return state[key]

    w = need("patch_embed.proj.weight")
    if w.ndim != 4 or w.shape[1] != 1:
        raise CheckpointError(f"{name}: patch_embed.proj.weight {tuple(w.shape)}, expected (D, 1, pf, pt)")
    dim, pf, pt = (int(v) for v in (w.shape[0], w.shape[2], w.shape[3]))
    use_cls, notes = "cls_token" in state, []
    match = RUN_NAME.search(name)
    if preset is None and match:
        preset = match.group(1)
        notes.append(f"input {preset} read from the name {name!r}")
    if preset is None:
        rows = need("pos_embed").shape[1] - use_cls
        preset = f"80x{rows // max(1, 80 // pf) * pt}p{pf}x{pt}"
        notes.append(f"input {preset} inferred from pos_embed assuming 80 mel bins; pass a preset if wrong")
    n_mels, n_frames, ppf, ppt = parse_preset(preset)
    if (ppf, ppt) != (pf, pt):
        raise CheckpointError(f"{name}: preset {preset} has {ppf}x{ppt} patches, the weights {pf}x{pt}")
    qkv = "kzero" if "blocks.0.attn.q_bias" in state else "full" if "blocks.0.attn.qkv.bias" in state else None
    if qkv is None:
        raise CheckpointError(f"{name}: blocks.0.attn has neither q_bias/v_bias nor qkv.bias: unsupported")
    heads = heads or heads_of_width("encoder", dim)
    if heads is None:
        known = {w: h for w, _, h in ENCODER_SIZES.values()}
        raise CheckpointError(f"{name}: cannot infer the heads of a {dim}-wide encoder (known {known}); "
                              "pass heads (load(..., heads=N)), or convert it once: specmae convert FILE OUT --heads N")
    enc = EncoderConfig(n_mels, n_frames, pf, pt, dim, _depth(state, "blocks."), heads,
                        need("blocks.0.mlp.fc1.weight").shape[0] / dim, use_cls, qkv)
    pred = state.get("decoder_pred.weight")
    has_decoder = pred is not None and pred.shape[0] == pf * pt and "decoder_blocks.0.norm1.weight" in state
    if has_decoder:
        d_dim = int(pred.shape[1])
        d_heads = decoder_heads or heads_of_width("decoder", d_dim)
        if d_heads is None:
            known = {w: h for w, _, h in DECODER_SIZES.values()}
            raise CheckpointError(f"{name}: cannot infer the heads of a {d_dim}-wide decoder "
                                  f"(known {known}); pass decoder_heads (load(..., decoder_heads=N)), or convert "
                                  "it once: specmae convert FILE OUT --decoder-heads N")
        table = state.get("decoder_pos_embed")
        grid_table = sincos_2d(d_dim, enc.grid, use_cls) if d_dim % 4 == 0 else None
        pos = "2d" if (table is not None and grid_table is not None and table.shape == grid_table.shape
                       and torch.allclose(table.float(), grid_table, atol=1e-5)) else "1d"
        dec = DecoderConfig(d_dim, _depth(state, "decoder_blocks."), d_heads,
                            need("decoder_blocks.0.mlp.fc1.weight").shape[0] / d_dim, pos, norm_pix_loss,
                            official_no_cls_quirk)
        if ("decoder_blocks.0.attn.q_bias" in state) != (qkv == "kzero"):
            raise CheckpointError(f"{name}: decoder and encoder blocks use different qkv biases: unsupported")
    else:
        dec = DecoderConfig()
        notes.append("no MAE decoder in the file: a random one (seed 0) is stored, so the checkpoint "
                     "embeds but cannot reconstruct")
    frontend = FrontendConfig.msm_mae_32k() if match and match.group(2) else FrontendConfig()
    try:
        frontend = dataclasses.replace(frontend, n_mels=n_mels)
        return ModelConfig(enc, dec).validate(), frontend, notes, has_decoder
    except ConfigError as e:
        raise CheckpointError(f"{name}: {e}") from e


def load_official(path: str | os.PathLike, *, preset: str | None = None, heads: int | None = None,
                  decoder_heads: int | None = None, norm_stats: tuple[float, float] | None = None,
                  norm_pix_loss: bool = False, official_no_cls_quirk: bool = False):
    """Official MSM-MAE or M2D weights -> (MaskedAutoencoder in eval mode, specmae config dict).

    The config records where the weights came from under `imported`. Normalisation statistics:
    `norm_stats`, else the file's (M2D), else AudioSet's (-7.1, 4.2), as the official runtime.
    """
    from ..model.mae import build_mae
    from ..masking import MaskingConfig

    path = Path(path)
    state, extras = read_foreign_weights(path)
    name = f"{path.parent.name}/{path.name}"
    cfg, frontend, notes, has_decoder = official_config(state, name, preset, heads, decoder_heads,
                                                        norm_pix_loss, official_no_cls_quirk)
    if norm_stats is not None:
        stats, source = [float(v) for v in norm_stats], "given"
    elif "norm_stats" in extras:
        stats, source = extras["norm_stats"], "from the file"
    else:
        stats, source = list(AUDIOSET_NORM_STATS), "AudioSet default: the file has none"
    keep = state if has_decoder else {k: v for k, v in state.items() if k.startswith(ENCODER_KEYS) or k == "pos_embed"}
    model = build_mae(cfg, seed=0)  # the decoder stays at this init when the file has none
    mapped = from_official_state_dict(keep, model, missing_ok=() if has_decoder else DECODER_KEYS)
    model.load_state_dict({**model.state_dict(), **mapped}, strict=True)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    imported = dict(file=str(path.resolve()), sha256=digest.hexdigest(),
                    format="msm-mae" if cfg.encoder.qkv_bias == "kzero" else "m2d", epoch=extras["epoch"],
                    tensors=len(state), mapped=len(mapped), ignored=sorted(set(state) - set(keep)),
                    norm_stats_source=source, notes=notes)
    config = dict(model=cfg.to_dict(), frontend=frontend.to_dict(), norm_stats=stats,
                  masking=MaskingConfig().to_dict(), train={}, step=0, imported=imported)
    return model.eval(), config


def import_report(config: dict) -> str:
    """Readable summary of `config['imported']` and the rebuilt model."""
    imp, enc, dec = config["imported"], config["model"]["encoder"], config["model"]["decoder"]
    preset = f"{enc['n_mels']}x{enc['n_frames']}p{enc['patch_f']}x{enc['patch_t']}"
    lines = [f"{imp['file']}: {imp['format']} weights (epoch {imp['epoch']}), "
             f"{imp['mapped']} of {imp['tensors']} tensors mapped",
             f"  encoder {preset}: width {enc['dim']}, depth {enc['depth']}, {enc['heads']} heads, "
             f"CLS {'on' if enc['use_cls'] else 'off'}, qkv bias {enc['qkv_bias']}",
             f"  decoder: width {dec['dim']}, depth {dec['depth']}, {dec['heads']} heads, {dec['pos']} positions"
             + (", official no-CLS quirk" if dec["official_no_cls_quirk"] else ""),
             f"  normalisation: mean {config['norm_stats'][0]}, std {config['norm_stats'][1]} "
             f"({imp['norm_stats_source']})"]
    if imp["ignored"]:
        more = " ..." if len(imp["ignored"]) > 6 else ""
        lines.append(f"  ignored {len(imp['ignored'])} keys outside the model: {', '.join(imp['ignored'][:6])}{more}")
    lines += [f"  note: {n}" for n in imp["notes"]]
    return "\n".join(lines)


def convert_official(src: str | os.PathLike, dst: str | os.PathLike, overwrite: bool = False,
                     **options) -> tuple[Path, str]:
    """Write official weights `src` as a specmae checkpoint `dst` -> (dst, report). See load_official.

    An existing `dst` (but an empty folder) is refused before any work (outputs.claim); with
    `overwrite` it is moved aside to `<dst>.old-<YYYYmmdd-HHMMSS>` once the conversion has
    succeeded, never deleted.
    """
    claimed = claim(dst, "any", "specmae convert", overwrite=overwrite)
    model, config = load_official(src, **options)
    claimed.take()
    return save_checkpoint(claimed.path, model.state_dict(), config), import_report(config)
