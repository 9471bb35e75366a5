"""Import of official MSM-MAE / M2D weights, and export of the encoder."""

import argparse
import importlib.util
import os

import numpy as np
import pytest
import torch

from conftest import (GOLDEN_MASK_RATIO, GOLDEN_MODELS, golden_frontend_config, golden_import_options,
                      golden_model_config)
from specmae.checkpoint import CheckpointError, load_model
from specmae.checkpoint.official import convert_official, load_official
from specmae.cli import main
from specmae.features.export import ChunkEncoder, export, load_exported
from specmae.features import load
from specmae.masking import ids_from_noise, n_keep
from specmae.model.vit import Block
from test_features import tiny_checkpoint


def encoder_table(dim, n_f, n_t, cls):
    """The documented 2-D table: first half time index, second half frequency, float64 -> float32."""
    omega = 1.0 / 10000 ** (np.arange(dim // 4) / (dim / 4))
    h, w = np.meshgrid(np.arange(n_f), np.arange(n_t), indexing="ij")
    half = lambda pos: np.concatenate([np.sin(np.outer(pos.ravel(), omega)), np.cos(np.outer(pos.ravel(), omega))], 1)
    table = np.concatenate([half(w), half(h)], 1)
    return torch.from_numpy(np.concatenate([np.zeros((int(cls), dim)), table]).astype(np.float32))[None]


def decoder_table(dim, length, cls):
    """The documented 1-D sinusoid: angle = pos / 10000^(2 floor(j/2) / dim), even sin, odd cos."""
    j = np.arange(dim)
    angles = np.arange(length)[:, None] / 10000 ** (2 * (j // 2) / dim)
    table = np.where(j % 2 == 0, np.sin(angles), np.cos(angles))
    return torch.from_numpy(np.concatenate([np.zeros((int(cls), dim)), table]).astype(np.float32))[None]


def official_state_dict(n_frames=512, dim=768, depth=2, d_dim=384, d_depth=4, cls=True, patch=(16, 16), seed=0):
    """Keys and shapes as docs/checkpoints.md documents them (k-bias-zero blocks, no qkv.bias)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: 0.02 * torch.randn(*shape, generator=g)
    pf, pt = patch
    n_f, n_t = 80 // pf, n_frames // pt
    sd = {"cls_token": r(1, 1, dim)} if cls else {}
    sd.update({"pos_embed": encoder_table(dim, n_f, n_t, cls), "mask_token": r(1, 1, d_dim),
               "decoder_pos_embed": decoder_table(d_dim, n_f * n_t, cls),
               "patch_embed.proj.weight": r(dim, 1, pf, pt), "patch_embed.proj.bias": r(dim)})
    for prefix, d, n in [("blocks", dim, depth), ("decoder_blocks", d_dim, d_depth)]:
        for i in range(n):
            b = f"{prefix}.{i}."
            sd.update({b + "norm1.weight": 1 + r(d), b + "norm1.bias": r(d), b + "attn.q_bias": r(d),
                       b + "attn.v_bias": r(d), b + "attn.qkv.weight": r(3 * d, d), b + "attn.proj.weight": r(d, d),
                       b + "attn.proj.bias": r(d), b + "norm2.weight": 1 + r(d), b + "norm2.bias": r(d),
                       b + "mlp.fc1.weight": r(4 * d, d), b + "mlp.fc1.bias": r(4 * d),
                       b + "mlp.fc2.weight": r(d, 4 * d), b + "mlp.fc2.bias": r(d)})
        if prefix == "blocks":
            sd.update({"norm.weight": 1 + r(dim), "norm.bias": r(dim),
                       "decoder_embed.weight": r(d_dim, dim), "decoder_embed.bias": r(d_dim)})
    sd.update({"decoder_norm.weight": 1 + r(d_dim), "decoder_norm.bias": r(d_dim),
               "decoder_pred.weight": r(pf * pt, d_dim), "decoder_pred.bias": r(pf * pt)})
    return sd


@pytest.mark.parametrize("cls", [True, False])
def test_synthetic_official_checkpoint_converts_and_loads_strictly(tmp_path, cls):
    sd = official_state_dict(cls=cls)
    src = tmp_path / "80x512p16x16_synthetic" / "checkpoint-100.pth"
    src.parent.mkdir()
    torch.save({"model": sd, "epoch": 100, "args": argparse.Namespace(blr=1.5e-4, model="mae")}, src)
    out, report = convert_official(src, tmp_path / "converted")
    model, config = load_model(out)  # strict
    enc, dec = config["model"]["encoder"], config["model"]["decoder"]
    assert (enc["n_frames"], enc["dim"], enc["depth"], enc["heads"], enc["use_cls"], enc["qkv_bias"]) == \
        (512, 768, 2, 12, cls, "kzero")
    assert (dec["dim"], dec["depth"], dec["heads"], dec["pos"]) == (384, 4, 6, "1d")
    assert config["norm_stats"] == [-7.1, 4.2] and config["imported"]["epoch"] == 100
    assert "AudioSet default" in report and f"{len(sd) - 2} of {len(sd)} tensors mapped" in report
    assert torch.equal(model.encoder.blocks[1].attn.q_bias, sd["blocks.1.attn.q_bias"])
    assert torch.equal(model.decoder_blocks[3].attn.v_bias, sd["decoder_blocks.3.attn.v_bias"])
    assert torch.equal(model.decoder_pred.weight, sd["decoder_pred.weight"])


def test_official_weights_stored_as_safetensors_convert_too(tmp_path):
    from safetensors.torch import save_file

    sd = official_state_dict(depth=1, d_depth=1)
    src = tmp_path / "80x512p16x16_st" / "weights.safetensors"
    src.parent.mkdir()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(src))
    model, _ = load_official(src)
    assert torch.equal(model.encoder.blocks[0].attn.qkv.weight, sd["blocks.0.attn.qkv.weight"])


def test_kzero_block_equals_full_block_with_concatenated_bias():
    kzero, full = Block(48, 3, qkv_bias="kzero"), Block(48, 3, qkv_bias="full")
    with torch.no_grad():
        kzero.attn.q_bias.normal_(), kzero.attn.v_bias.normal_()
        state = {k: v for k, v in kzero.state_dict().items() if not k.endswith(("q_bias", "v_bias"))}
        state["attn.qkv.bias"] = torch.cat([kzero.attn.q_bias, torch.zeros(48), kzero.attn.v_bias])
        full.load_state_dict(state, strict=True)
        x = torch.randn(2, 66, 48)
        assert torch.equal(kzero(x), full(x))


def test_m2d_format_file_converts_with_its_norm_stats(tmp_path):
    ours = load(tiny_checkpoint(tmp_path / "tiny", norm_stats=(-5.5, 3.5)))
    state = {}
    for key, value in ours.encoder.state_dict().items():
        if key.endswith("attn.q_bias"):
            block = key[: -len("q_bias")]
            value = torch.cat([value, torch.zeros_like(value), ours.encoder.state_dict()[block + "v_bias"]])
            key = block + "qkv.bias"
        elif key.endswith("attn.v_bias"):
            continue
        state["module.ar.runtime.backbone." + key] = value
    state["module.ar.runtime.backbone.pos_embed"] = ours.encoder.pos_embed
    state["norm_stats"] = torch.tensor([-5.5, 3.5])
    state["target_blocks.0.norm1.weight"] = torch.ones(48)  # M2D's target network: not part of the encoder
    src = tmp_path / "m2d_vit_base-80x208p16x16-240101" / "checkpoint-300.pth"
    src.parent.mkdir()
    torch.save(state, src)
    model, config = load_official(src, heads=3)
    assert config["model"]["encoder"]["qkv_bias"] == "full" and config["norm_stats"] == [-5.5, 3.5]
    imported = config["imported"]
    assert imported["format"] == "m2d" and imported["ignored"] == ["target_blocks.0.norm1.weight"]
    assert any("cannot reconstruct" in note for note in imported["notes"])
    converted = load(src, heads=3)
    wave = 2 * torch.rand(40000, generator=torch.Generator().manual_seed(1)) - 1
    torch.testing.assert_close(converted.embed(wave, 16000).frames, ours.embed(wave, 16000).frames, atol=1e-6, rtol=0)


class Evil:
    def __reduce__(self):
        return os.system, ("touch pwned-by-checkpoint",)


def test_a_file_carrying_pickled_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "80x208p16x16_x" / "checkpoint-1.pth"
    src.parent.mkdir()
    torch.save({"model": official_state_dict(208, 48, 1, 32, 1), "hook": Evil()}, src)
    with pytest.raises(CheckpointError, match="refused: it holds pickled Python objects"):
        load_official(src, heads=3, decoder_heads=4)
    assert not (tmp_path / "pwned-by-checkpoint").exists()


def test_truncated_or_foreign_files_are_clear_errors(tmp_path):
    good = tmp_path / "80x208p16x16_x" / "checkpoint-1.pth"
    good.parent.mkdir()
    torch.save({"model": official_state_dict(208, 48, 1, 32, 1)}, good)
    truncated = good.with_name("checkpoint-2.pth")
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    wav = good.with_name("checkpoint-3.pth")
    wav.write_bytes(b"RIFF" + bytes(100))
    for bad in (truncated, wav):
        with pytest.raises(CheckpointError, match=f"{bad.name}: not a readable weights file"):
            load_official(bad, heads=3, decoder_heads=4)
    ckpt = tiny_checkpoint(tmp_path / "tiny")
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="model.safetensors: unreadable weights"):
        load(ckpt)
    with pytest.raises(CheckpointError, match="not a specmae checkpoint"):
        load(tmp_path)


def test_bad_keys_heads_and_presets_are_reported(tmp_path):
    src = tmp_path / "80x208p16x16_x" / "checkpoint-1.pth"
    src.parent.mkdir()
    sd = official_state_dict(208, 48, 2, 32, 1)
    del sd["blocks.1.mlp.fc2.bias"]
    sd["blocks.0.attn.k_bias"] = torch.zeros(48)
    torch.save({"model": sd}, src)
    with pytest.raises(CheckpointError) as e:
        load_official(src, heads=3, decoder_heads=4)
    assert "missing key encoder.blocks.1.mlp.fc2.bias" in str(e.value)
    assert "unexpected key blocks.0.attn.k_bias" in str(e.value)
    torch.save({"model": official_state_dict(208, 48, 1, 32, 1)}, src)
    with pytest.raises(CheckpointError, match="heads of a 48-wide encoder"):
        load_official(src)
    with pytest.raises(CheckpointError, match="80x208p16x8 has 16x8 patches, the weights 16x16"):
        load_official(src, preset="80x208p16x8", heads=3, decoder_heads=4)


@pytest.mark.parametrize("folder", GOLDEN_MODELS)
def test_golden_import_rebuilds_the_official_config(golden, folder):
    """Given only what the weights cannot show (heads, loss and quirk switches), the import reads
    the input size from the run-folder name and the rest from the keys and shapes."""
    options = golden_import_options(folder)
    del options["preset"]
    model, config = load_official(golden / folder / "checkpoint-0.pth", **options)
    assert model.cfg == golden_model_config(folder)
    assert config["frontend"] == golden_frontend_config(folder).to_dict()


def convert_flags(options: dict) -> list[str]:
    """load_official keyword arguments -> the equivalent `specmae convert` flags."""
    flags = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags += [flag] if value else []
        else:
            flags += [flag, str(value)]
    return flags


@pytest.mark.parametrize("folder", GOLDEN_MODELS)
def test_golden_convert_cli_reproduces_official_outputs(golden, folder, tmp_path, capsys):
    mu, sigma = np.load(golden / "norm_stats.npy")
    src, out = golden / folder / "checkpoint-0.pth", tmp_path / "converted"
    main(["convert", str(src), str(out), *convert_flags(golden_import_options(folder)),
          "--norm-stats", str(mu), str(sigma)])
    n = len(torch.load(src, weights_only=True)["model"])
    assert f"{n - 2} of {n} tensors mapped" in capsys.readouterr().out  # + 2 fixed tables, checked not stored
    model, _ = load_model(out)
    assert model.cfg == golden_model_config(folder)
    load_np = lambda name: torch.from_numpy(np.load(golden / folder / f"{name}.npy"))
    x, ids = load_np("pretrain_input"), ids_from_noise(load_np("pretrain_noise"))
    with torch.no_grad():
        loss, pred, mask = model(x, GOLDEN_MASK_RATIO, ids_shuffle=ids)
        latent = model.forward_encoder(x, ids, n_keep(model.cfg.encoder.num_patches, GOLDEN_MASK_RATIO))
    torch.testing.assert_close(latent, load_np("pretrain_latent"), atol=2e-5, rtol=0)
    torch.testing.assert_close(pred, load_np("pretrain_pred"), atol=2e-5, rtol=0)
    assert torch.equal(mask, load_np("pretrain_mask"))
    assert abs(loss.item() - load_np("pretrain_loss").item()) <= 5e-7
    frames = load(out).embed(torch.from_numpy(np.load(golden / "waves.npy")), 16000).frames
    torch.testing.assert_close(frames, load_np("feats"), atol=2e-5, rtol=0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit, for the torchscript format
@pytest.mark.parametrize("fmt", ["exported", "torchscript"])
def test_exported_encoder_matches_the_library(tmp_path, fmt):
    ckpt = tiny_checkpoint(tmp_path / "tiny")
    path = export(ckpt, tmp_path / ("enc.pt" if fmt == "torchscript" else "enc.pt2"), fmt)
    module, meta = load_exported(path)
    embedder = load(ckpt)
    lms = torch.randn(3, 80, 208) * 4 - 7
    torch.testing.assert_close(module(lms), embedder.embed_lms(lms).frames, atol=1e-5, rtol=1e-5)
    assert meta["norm_stats"] == [-7.0, 4.0] and meta["model"]["encoder"]["n_frames"] == 208
    reference = ChunkEncoder(embedder.encoder, (-7.0, 4.0))(lms[:1])
    torch.testing.assert_close(module(lms[:1]), reference, atol=1e-6, rtol=0)  # any batch size


@pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime")),
                    reason="onnx, onnxscript and onnxruntime not installed")
def test_onnx_export_matches_the_library(tmp_path):
    import onnxruntime

    ckpt = tiny_checkpoint(tmp_path / "tiny")
    path = export(ckpt, tmp_path / "enc.onnx", "onnx")
    lms = torch.randn(2, 80, 208) * 4 - 7
    session = onnxruntime.InferenceSession(str(path))
    got = session.run(None, {session.get_inputs()[0].name: lms.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), load(ckpt).embed_lms(lms).frames, atol=1e-4, rtol=1e-4)
