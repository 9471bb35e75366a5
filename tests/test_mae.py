"""The model against the official MSM-MAE code (golden data) and by property."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import GOLDEN, GOLDEN_MASK_RATIO, GOLDEN_MODELS, golden_model_config, golden_spec
from specmae.checkpoint import CheckpointError
from specmae.checkpoint.official import from_official_state_dict
from specmae.model.mae import MaskedAutoencoder, patchify, unpatchify
from specmae.masking import ids_from_noise, n_keep
from specmae.model.presets import INPUT_PRESETS, model_config
from specmae.schema import ConfigError


def tiny_cfg(preset="80x208p16x16", **kw):
    return model_config(preset, "tiny", dim=48, depth=3, heads=3,
                        decoder_dim=32, decoder_depth=2, decoder_heads=4, **kw)


def golden_model(golden, folder):
    model = MaskedAutoencoder(golden_model_config(folder))
    official = torch.load(golden / folder / "checkpoint-0.pth", weights_only=True)["model"]
    model.load_state_dict(from_official_state_dict(official, model), strict=True)
    return model.eval()


def test_every_golden_model_folder_is_tested(golden):
    """A model folder the manifest lists but the copy lacks would otherwise drop out silently."""
    listed = {Path(f).parent.name for f in json.loads((golden / "manifest.json").read_text())["files"]
              if Path(f).name == "model_config.json"}
    assert listed <= set(GOLDEN_MODELS), f"missing under {GOLDEN}: {sorted(listed - set(GOLDEN_MODELS))}"


@pytest.mark.parametrize("folder", GOLDEN_MODELS)
def test_golden_config_gives_the_official_sizes(golden, folder):
    """The config built from model_config.json against the sizes the official code derived from it."""
    cfg, spec = golden_model_config(folder), golden_spec(folder)
    derived, enc, dec = spec["derived"], cfg.encoder, cfg.decoder
    model = golden_model(golden, folder)
    assert list(enc.grid) == derived["grid_size"] and enc.num_patches == derived["num_patches"]
    assert enc.patch_f * enc.patch_t == derived["patch_dim"]
    assert enc.dim // enc.heads == derived["head_dim"] and dec.dim // dec.heads == derived["decoder_head_dim"]
    assert model.encoder.blocks[0].mlp.fc1.out_features == derived["mlp_hidden"]
    assert model.decoder_blocks[0].mlp.fc1.out_features == derived["decoder_mlp_hidden"]
    assert n_keep(enc.num_patches, GOLDEN_MASK_RATIO) == derived["len_keep_at_mask_ratio_0.75"]
    # specmae keeps the fixed positional tables out of the parameters, as the official code
    # keeps them out of training
    assert sum(p.numel() for p in model.parameters()) == derived["n_trainable_parameters"]
    assert len(model.state_dict()) + 2 == derived["n_state_dict_entries"]  # + the two fixed tables


@pytest.mark.parametrize("folder", GOLDEN_MODELS)
def test_pretrain_forward_matches_official(golden, folder):
    model = golden_model(golden, folder)
    load = lambda name: torch.from_numpy(np.load(golden / folder / f"pretrain_{name}.npy"))
    x, noise = load("input"), load("noise")
    ids_shuffle = ids_from_noise(noise)
    loss, pred, mask = model(x, GOLDEN_MASK_RATIO, ids_shuffle=ids_shuffle)
    keep = n_keep(model.cfg.encoder.num_patches, GOLDEN_MASK_RATIO)
    latent = model.forward_encoder(x, ids_shuffle, keep)
    assert torch.equal(torch.argsort(ids_shuffle, 1), load("ids_restore"))
    assert torch.equal(mask, load("mask"))
    torch.testing.assert_close(latent, load("latent"), atol=2e-5, rtol=0)
    torch.testing.assert_close(pred, load("pred"), atol=2e-5, rtol=0)
    assert abs(loss.item() - load("loss").item()) <= 5e-7


@pytest.mark.parametrize("folder", GOLDEN_MODELS)
def test_gradients_match_official(golden, folder):
    model = golden_model(golden, folder).train()
    x = torch.from_numpy(np.load(golden / folder / "pretrain_input.npy"))
    noise = torch.from_numpy(np.load(golden / folder / "pretrain_noise.npy"))
    loss, _, _ = model(x, GOLDEN_MASK_RATIO, ids_shuffle=ids_from_noise(noise))
    loss.backward()
    expected = json.loads((golden / folder / "pretrain_grad_norms.json").read_text())
    grads = {n: p.grad.norm().item() for n, p in model.named_parameters()}
    for name, value in expected.items():
        ours = grads["encoder." + name] if "encoder." + name in grads else grads[name]
        assert ours == pytest.approx(value, rel=1e-4, abs=1e-7), name


@pytest.mark.parametrize("folder", GOLDEN_MODELS)
def test_encoder_layers_match_official_first_chunk(golden, folder):
    """Encoder on the first T frames of the stored normalised input = official features there."""
    model = golden_model(golden, folder)
    enc = model.cfg.encoder
    lms = torch.from_numpy(np.load(golden / "lms.npy"))
    mu, sigma = np.load(golden / "norm_stats.npy")
    x = ((lms - float(mu)) / float(sigma))[..., :enc.n_frames]
    with torch.no_grad():
        final, layers = model.encoder(x, return_layers=True)
    n_f, n_t = enc.grid
    frames = lambda z: z[:, int(enc.use_cls):].reshape(3, n_f, n_t, -1).transpose(1, 2).reshape(3, n_t, -1)
    expected = np.load(golden / folder / "feats_layers.npy")[:, :, :n_t]
    for i, z in enumerate(layers[:-1] + [final]):
        torch.testing.assert_close(frames(z), torch.from_numpy(expected[i]), atol=2e-5, rtol=0)


def test_official_import_reports_every_bad_key():
    model = MaskedAutoencoder(tiny_cfg())
    official = {k.removeprefix("encoder."): v for k, v in model.state_dict().items()}
    official["blocks.0.attn.qkv.bias"] = torch.zeros(144)
    del official["norm.weight"]
    official["decoder_pred.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError) as e:
        from_official_state_dict(official, model)
    msg = str(e.value)
    assert "unexpected key blocks.0.attn.qkv.bias" in msg
    assert "missing key encoder.norm.weight" in msg
    assert "decoder_pred.weight: shape (3, 3)" in msg


@pytest.mark.parametrize("preset", INPUT_PRESETS)
def test_every_preset_trains_one_step(preset):
    model = MaskedAutoencoder(tiny_cfg(preset))
    enc = model.cfg.encoder
    x = torch.randn(2, 1, enc.n_mels, enc.n_frames)
    loss, pred, mask = model(x, 0.75, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert pred.shape == (2, enc.num_patches, enc.patch_f * enc.patch_t)
    assert (mask.sum(1) == enc.num_patches - int(enc.num_patches * 0.25)).all()
    assert all(p.grad is not None for p in model.parameters())


def test_patchify_roundtrip_and_order():
    x = torch.arange(80 * 208, dtype=torch.float32).reshape(1, 1, 80, 208)
    p = patchify(x, 16, 16)
    assert p.shape == (1, 65, 256)
    # patch 14 = frequency row 1, time column 1; its first value is x[16, 16], then along time
    assert p[0, 14, 0] == x[0, 0, 16, 16] and p[0, 14, 1] == x[0, 0, 16, 17]
    assert torch.equal(unpatchify(p, (5, 13), 16, 16), x)


@pytest.mark.parametrize("use_cls", [True, False])
@pytest.mark.parametrize("pos", ["1d", "2d"])
@pytest.mark.parametrize("qkv", ["full", "kzero"])
def test_options_and_batch_independence(use_cls, pos, qkv):
    """Every option builds, and a sample's loss terms do not depend on its batch-mates."""
    model = MaskedAutoencoder(tiny_cfg(use_cls=use_cls, qkv_bias=qkv, decoder_pos=pos)).eval()
    x = torch.randn(3, 1, 80, 208)
    ids = ids_from_noise(torch.rand(3, 65))
    _, pred, _ = model(x, 0.75, ids_shuffle=ids)
    _, pred1, _ = model(x[1:2], 0.75, ids_shuffle=ids[1:2])
    torch.testing.assert_close(pred[1:2], pred1, atol=1e-5, rtol=1e-5)


def test_norm_pix_loss_targets_are_standardised():
    model = MaskedAutoencoder(tiny_cfg(decoder_norm_pix_loss=True))
    x = 5 + 3 * torch.randn(2, 1, 80, 208)
    target = model.patchify(x)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    mask = torch.ones(2, 65)
    assert model.forward_loss(x, target, mask).item() == pytest.approx(0.0, abs=1e-10)
    assert model.forward_loss(x, model.patchify(x), mask).item() > 1.0


def test_official_no_cls_quirk_drops_first_visible_token():
    cfg = tiny_cfg(use_cls=False)
    quirk = tiny_cfg(use_cls=False, decoder_official_no_cls_quirk=True)
    a, b = MaskedAutoencoder(cfg).eval(), MaskedAutoencoder(quirk).eval()
    b.load_state_dict(a.state_dict())
    x, ids = torch.randn(1, 1, 80, 208), ids_from_noise(torch.rand(1, 65))
    latent = a.forward_encoder(x, ids, 16)
    restore = torch.argsort(ids, 1)
    # quirk: kept slot j receives kept token j+1, i.e. the plain decoder fed the latent minus token 0
    with torch.no_grad():
        assert not torch.allclose(a.forward_decoder(latent, restore), b.forward_decoder(latent, restore))
        torch.testing.assert_close(b.forward_decoder(latent, restore), a.forward_decoder(latent[:, 1:], restore))


@pytest.mark.parametrize("bad, message", [
    (dict(preset="80x208p16x15"), "does not divide"),
    (dict(preset="eighty"), "unknown input preset"),
    (dict(size="huge"), "unknown encoder size"),
    (dict(qkv_bias="kone"), "allowed"),
])
def test_impossible_configs_fail_with_allowed_values(bad, message):
    with pytest.raises(ConfigError, match=message):
        model_config(**bad)


@pytest.mark.parametrize("length", [17, 161])
def test_bf16_cpu_attention_matches_fp32_sdpa(length):
    # bf16 on the CPU takes the explicit-matmul path (vit.attention); it must agree with the
    # fp32 fused kernel to bf16 precision, values and gradients.
    from specmae.model.vit import attention
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, length, 16, generator=g) for _ in range(3))
    ref = [t.clone().requires_grad_() for t in (q, k, v)]
    low = [t.bfloat16().requires_grad_() for t in (q, k, v)]
    out_ref = torch.nn.functional.scaled_dot_product_attention(*ref)
    out_low = attention(*low)
    assert out_low.dtype == torch.bfloat16
    torch.testing.assert_close(out_low.float(), out_ref, atol=3e-2, rtol=3e-2)
    weights = torch.randn(out_ref.shape, generator=g)
    (out_ref * weights).sum().backward()
    (out_low.float() * weights).sum().backward()
    for a, b in zip(low, ref):
        torch.testing.assert_close(a.grad.float(), b.grad, atol=6e-2, rtol=6e-2)
