"""The configuration schema, its validation, CLI composition, and the one checkpoint loader."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from specmae import checkpoint
from specmae.audio import FrontendConfig
from specmae.audio.normalize import NormStats
from specmae.cli import build_parser, pretrain_config
from specmae.config import ProbeConfig, RunConfig, TrainConfig, compose, parse_set, read_config_file
from specmae.evaluation.evaluate import parse_task_spec
from specmae.features import load
from specmae.masking import MaskingConfig
from specmae.model.presets import (DECODER_SIZES, ENCODER_SIZES, EncoderConfig, heads_of_width, model_config,
                                   parse_preset, size_fields)
from specmae.schema import ConfigError, from_dict

FIXTURES = Path(__file__).parent / "fixtures"


def test_round_trip_of_every_default_and_builtin_config():
    for layers in ([], [read_config_file("demo")], [read_config_file("msm-mae")]):
        cfg = compose(layers).validate()
        again = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert again == cfg


def test_token_weight_decay_is_each_recipes_explicit_setting():
    """Pre-training decays the [CLS] and mask tokens (the official MSM-MAE and MaskSpec groups),
    fine-tuning does not (MAE's no_weight_decay); a config written before the field existed
    reads it as false, the rule those runs trained with."""
    from specmae.config import FinetuneConfig, builtin_configs
    assert RunConfig().train.decay_tokens and not FinetuneConfig().train.decay_tokens
    for name in builtin_configs():   # pre-training configs decay them, fine-tuning ones do not
        assert read_config_file(name)["train"]["decay_tokens"] is not name.endswith("-finetune"), name
    stored = RunConfig().to_dict()
    del stored["train"]["decay_tokens"]
    assert RunConfig.from_dict(stored).train.decay_tokens is False
    stored = FinetuneConfig().to_dict()
    del stored["train"]["decay_tokens"]
    assert FinetuneConfig.from_dict(stored).train.decay_tokens is False


@pytest.mark.parametrize("data, message", [
    ({"nosuch": {"x": 1}}, "unknown field nosuch"),
    ({"train": {"batch_size": 0}}, "train.batch_size: expected a positive number, got 0"),
    ({"train": {"epochs": "ten"}}, "train.epochs: expected an integer, got str 'ten'"),
    ({"train": {"blr": -1e-3}}, "train.blr: expected a positive number"),
    ({"train": {"warmup_epochs": -1}}, "train.warmup_epochs: expected a number >= 0"),
    ({"train": {"checkpoint_every": 0}}, "train.checkpoint_every"),
    ({"train": {"bf16": "yes"}}, "train.bf16: expected true or false"),
    ({"train": {"betas": [0.9]}}, "train.betas: expected 2 values"),
    ({"train": {"batch_size": 64, "micro_batch": 24}}, "does not divide train.batch_size"),
    ({"model": {"encoder": {"dimm": 3}}}, "model.encoder: unknown field dimm"),
    ({"model": {"encoder": {"n_mels": 128}}}, "frontend.n_mels = 80 but model.encoder.n_mels = 128"),
    ({"model": {"encoder": {"patch_t": 15}}}, "model.encoder.patch_f, patch_t: patch 16x15 does not divide"),
    ({"model": {"encoder": {"heads": 5}}}, "model.encoder.dim: width 768 is not divisible by 5 heads"),
    ({"frontend": {"kind": "nnaudio"}}, "frontend.kind: 'nnaudio' is not one of msm-mae, maskspec"),
    ({"frontend": {"f_max": 9000}}, "sample_rate / 2 = 8000"),
    ({"masking": {"strategy": "stripes"}}, "masking.strategy: unknown masking strategy"),
    ({"masking": {"ratio": 1.5}}, "masking.ratio: mask ratio"),
    ({"masking": {"ratio": 0.999}}, "masking.ratio: mask ratio 0.999 leaves 0 of 65 patches visible"),
])
def test_bad_configs_name_the_field(data, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compose([data]).validate()


def test_schema_reads_types_exactly():
    enc = from_dict(EncoderConfig, {"dim": 64, "heads": 4, "mlp_ratio": 2, "use_cls": False})
    assert enc.mlp_ratio == 2.0 and isinstance(enc.mlp_ratio, float) and enc.use_cls is False
    with pytest.raises(ConfigError, match="depth: expected an integer, got bool True"):
        from_dict(EncoderConfig, {"depth": True})
    with pytest.raises(ConfigError, match="expected a finite number"):
        from_dict(TrainConfig, {"blr": float("nan")})
    with pytest.raises(ConfigError, match="expected a mapping"):
        RunConfig.from_dict({"train": [1, 2]})


def _args(*argv):
    return build_parser().parse_args(["pretrain", *argv])


def test_cli_flags_compose_with_the_config_file():
    cfg = pretrain_config(_args("--config", "demo", "--preset", "80x512p16x16", "--set", "train.epochs=3"))
    enc = cfg.model.encoder
    # The preset changes only the input and patch; the demo's small encoder and decoder stay.
    assert (enc.n_frames, enc.dim, enc.depth, cfg.model.decoder.dim) == (512, 192, 6, 128)
    assert cfg.train.epochs == 3 and cfg.train.batch_size == 64
    cfg = pretrain_config(_args("--config", "demo", "--size", "small", "--decoder", "maskspec"))
    assert (cfg.model.encoder.dim, cfg.model.encoder.heads, cfg.model.decoder.depth) == (384, 6, 8)
    assert cfg.model.encoder.n_frames == 208
    with pytest.raises(ConfigError, match="--size huge"):
        pretrain_config(_args("--size", "huge"))
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_set("train.epochs")


def test_every_configuration_mistake_is_a_config_error():
    # from_dict validates every config, the masking too (without a patch grid), and raises
    # ConfigError itself: no ValueError is re-wrapped on the way.
    with pytest.raises(ConfigError, match="masking.strategy: unknown masking strategy 'stripes'"):
        MaskingConfig.from_dict({"strategy": "stripes"})
    with pytest.raises(ConfigError, match="model.decoder.pos: '3d'"):
        model_config(size="tiny", decoder_pos="3d")
    with pytest.raises(ConfigError, match="unknown input preset"):
        parse_preset("eighty")
    with pytest.raises(ConfigError, match="unknown decoder size 'huge'"):
        model_config(decoder="huge")
    with pytest.raises(ConfigError, match="probe precision 'fp16'"):
        ProbeConfig(precision="fp16")


def test_one_table_of_model_sizes_for_presets_cli_and_official_weights():
    for part, sizes in (("encoder", ENCODER_SIZES), ("decoder", DECODER_SIZES)):
        for name, (dim, depth, heads) in sizes.items():
            assert size_fields(part, name) == {"dim": dim, "depth": depth, "heads": heads}
            assert heads_of_width(part, dim) == heads
    assert heads_of_width("encoder", 100) is None
    cfg = pretrain_config(_args("--size", "large", "--decoder", "maskspec"))
    named = model_config(size="large", decoder="maskspec")
    assert (cfg.model.encoder.dim, cfg.model.encoder.depth, cfg.model.encoder.heads) == \
        (named.encoder.dim, named.encoder.depth, named.encoder.heads)
    assert cfg.model.decoder == named.decoder


def test_one_key_value_parser_for_set_and_task_options():
    assert parse_set("model.encoder.depth = 6") == ("model.encoder.depth", 6)
    assert parse_set("train.betas=[0.9, 0.99]") == ("train.betas", [0.9, 0.99])
    assert parse_task_spec(["a.csv", "label=digit", "sep=;"]) == ("a.csv", {"label": "digit", "sep": ";"})
    with pytest.raises(ConfigError, match="--set '=6': expected KEY=VALUE, e.g. model.encoder.depth=6"):
        parse_set("=6")
    with pytest.raises(ConfigError, match="'labels=digit': expected KEY=VALUE with KEY one of name, label"):
        parse_task_spec(["a.csv", "labels=digit"])


def test_yaml_syntax_errors_and_non_mappings_are_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: 3\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_config_file(str(bad))
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        read_config_file(str(bad))
    with pytest.raises(ConfigError, match="not a built-in config"):
        read_config_file("no-such-config")


def test_a_checkpoint_written_by_specmae_0_1_still_loads_and_embeds_the_same():
    """tests/fixtures/checkpoint-v0.1 was written by specmae 0.1 (before front-end kinds, per-bin
    statistics and the typed loader), with the embedding of a fixed tone it gave then."""
    ck = checkpoint.load(FIXTURES / "checkpoint-v0.1")
    assert ck.config.frontend == FrontendConfig() and ck.norm_stats == NormStats((-6.5,), (3.9,))
    assert ck.step == 5 and ck.config.train.batch_size == 8 and ck.config.model.encoder.dim == 32
    t = np.arange(16000 * 3) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * np.sin(2 * np.pi * 3000 * t)).astype(np.float32)
    frames = load(FIXTURES / "checkpoint-v0.1").embed(wave, 16000).frames
    expected = np.load(FIXTURES / "checkpoint-v0.1-frames.npy")
    np.testing.assert_allclose(frames.numpy(), expected, rtol=0, atol=1e-6)


def test_a_saved_config_loads_back_into_the_same_typed_config(tmp_path):
    ck = checkpoint.load(FIXTURES / "checkpoint-v0.1")
    ck.config.frontend = FrontendConfig(stats="per-bin")
    stats = NormStats(tuple(np.linspace(-8, -4, 80)), tuple(np.linspace(3, 5, 80)))
    path = checkpoint.save_checkpoint(tmp_path / "ck", ck.model.state_dict(),
                                      dict(ck.config.to_dict(), norm_stats=stats.to_json(), step=7, epoch=1.0))
    again = checkpoint.load(path)
    assert again.config == ck.config and again.norm_stats == stats and again.step == 7


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.pop("norm_stats"), "norm_stats: missing"),
    (lambda c: c["model"]["encoder"].update(dim="wide"), "model.encoder.dim: expected an integer"),
    (lambda c: c["frontend"].update(n_mels=64), "frontend.n_mels = 64 but model.encoder.n_mels = 80"),
    (lambda c: c.update(norm_stats=[-7.0]), "norm_stats: expected"),
    (lambda c: c.update(norm_stats=[[-7.0] * 3, [4.0] * 3]), "3 per-bin statistics for a 80-bin front-end"),
    (lambda c: c.update(step="last"), "step: expected an integer"),
])
def test_a_damaged_checkpoint_config_is_a_checkpoint_error_naming_the_file(tmp_path, edit, message):
    folder = tmp_path / "ck"
    shutil.copytree(FIXTURES / "checkpoint-v0.1", folder)
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(checkpoint.CheckpointError, match=f"{folder / 'config.json'}: invalid checkpoint config: .*"
                       + message.replace("(", r"\(").replace(")", r"\)")):
        checkpoint.load(folder)


def test_norm_stats_per_bin_broadcast_over_frequency():
    stats = NormStats((1.0, 2.0, 3.0), (1.0, 2.0, 4.0))
    lms = torch.ones(2, 3, 5) * torch.tensor([2.0, 4.0, 7.0])[:, None]
    out = stats.apply(lms)
    assert torch.equal(out, torch.ones(2, 3, 5))
    assert stats.to_json() == [[1.0, 2.0, 3.0], [1.0, 2.0, 4.0]]
    assert NormStats.parse([-7.1, 4.2]).to_json() == [-7.1, 4.2]
    with pytest.raises(ConfigError, match="positive stds"):
        NormStats((0.0,), (0.0,))


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_honour_the_umask(tmp_path, umask):
    import os

    from specmae.files import atomic_write_text

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "report.json", "{}")
        ck = checkpoint.load(FIXTURES / "checkpoint-v0.1")
        path = checkpoint.save_checkpoint(tmp_path / "ck", ck.model.state_dict(), ck.to_json(), {"step": 5})
        checkpoint.commit_latest(tmp_path, "ck")
    finally:
        os.umask(old)
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "latest").stat().st_mode & 0o777 == 0o666 & ~umask
    assert path.stat().st_mode & 0o777 == 0o777 & ~umask
    for f in path.iterdir():
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f.name
