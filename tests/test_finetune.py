"""Fine-tuning: the classifier, augmentations, layer-wise lr decay, the recipe on the built-in
corpus (learning, multi-label, resume), prediction on audio of any length, and bad input."""

import csv
import json
import os
import subprocess
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import specmae
from conftest import written_before
from specmae.audio import synth
from specmae.checkpoint import CheckpointError, load, load_checkpoint, save_checkpoint
from specmae.config import FinetuneConfig, RunConfig, compose, read_config_file
from specmae.config import GRIDS, FinetuneInfo
from specmae.evaluation.probe import train_probe
from specmae.evaluation.tasks import Task, TaskError
from specmae.files import OutputError
from specmae.features.predict import Predictor
from specmae.model.classifier import Classifier, ClassifierConfig
from specmae.model.mae import build_mae
from specmae.model.presets import model_config
from specmae.model.vit import sincos_2d
from specmae.schema import ConfigError

from test_pretrain import kill_at_checkpoint
from specmae.training.augment import mixup, random_gain, spec_augment
from specmae.training.clips import balanced_weights
from specmae.training.engine import Dist, Trainer, param_groups
from specmae.training.finetune import FoldTrainer, layer_scale, probe_is_better
from specmae.training.finetune_run import finetune
from specmae.training.pretrain import pretrain

pytest.importorskip("matplotlib")

TINY = dict(dim=48, depth=2, heads=3, decoder_dim=32, decoder_depth=1, decoder_heads=4)
NO_AUGMENT = dict(augment=dict(mixup="none", freq_mask=0, time_mask=0, gain_db=0), model=dict(drop_path=0),
                  label_smoothing=0)


def tiny_encoder(frames: int = 96):
    return model_config(f"80x{frames}p16x16", "tiny", **TINY).encoder


def ft_config(**over) -> FinetuneConfig:
    """Small and fast: a few epochs, batch 16, no data workers, the reduced probe grid."""
    base = dict(train=dict(epochs=3, warmup_epochs=1, batch_size=16, blr=5e-2, workers=0, checkpoint_every=1000),
                probe="fast", scale="none", model=dict(pool="mean"))
    for key, value in over.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return FinetuneConfig.from_dict(base)


def synth_task(n: int, seed: int = 3, duration: float = 2.08) -> Task:
    """n clips of the built-in corpus; every fifth one is test."""
    waves, labels = synth.make_corpus(n, seed=seed, duration=duration)
    return Task.from_arrays("synth", list(waves), [synth.CLASSES[i] for i in labels],
                            ["test" if i % 5 == 4 else "train" for i in range(n)], sample_rate=16000,
                            classes=synth.CLASSES)


def random_checkpoint(path: Path, frames: int = 96) -> Path:
    cfg = RunConfig(model=model_config(f"80x{frames}p16x16", "tiny", **TINY))
    return save_checkpoint(path, build_mae(cfg.model, seed=0).state_dict(),
                           dict(cfg.to_dict(), norm_stats=[-8.0, 4.5], step=0, epoch=0))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A tiny MAE pre-trained for 450 steps on built-in clips of another seed (about 10 s)."""
    cfg = RunConfig(model=model_config("80x96p16x16", "tiny", **TINY))
    for key, value in dict(builtin_clips=480, epochs=30, warmup_epochs=2, batch_size=32, workers=0, blr=1.5e-3,
                           checkpoint_every=10_000, seed=1).items():
        setattr(cfg.train, key, value)
    return pretrain(cfg, tmp_path_factory.mktemp("pretrained"), progress=False).checkpoint


@pytest.fixture(scope="module")
def finetuned(pretrained, tmp_path_factory) -> tuple[Path, dict]:
    """The pre-trained tiny encoder fine-tuned at 208 frames (the 96-frame table interpolated),
    without augmentation: 20 short epochs on 384 clips."""
    out = tmp_path_factory.mktemp("finetuned")
    cfg = ft_config(**{**NO_AUGMENT, "model": dict(n_frames=208, drop_path=0)},
                    train=dict(epochs=20, warmup_epochs=2, log_every=1))
    return out, finetune(cfg, pretrained, synth_task(480), out, progress=False)


# --- the classifier ---------------------------------------------------------------------------


def test_positional_table_cropped_for_shorter_inputs_and_interpolated_for_longer():
    enc = tiny_encoder(96)                                      # grid 5 x 6
    pre = sincos_2d(enc.dim, enc.grid, True)
    short = Classifier(enc, 3, ClassifierConfig(n_frames=48)).encoder
    assert short.cfg.grid == (5, 3)
    torch.testing.assert_close(short.pos_embed, sincos_2d(enc.dim, (5, 3), True), rtol=0, atol=0)
    long = Classifier(enc, 3, ClassifierConfig(n_frames=208)).encoder
    table = long.pos_embed[0, 1:].reshape(5, 13, -1)
    old = pre[0, 1:].reshape(5, 6, -1)
    assert long.pos_embed.shape == (1, 1 + 5 * 13, enc.dim)
    torch.testing.assert_close(table[:, 0], old[:, 0])          # ends kept, the rest in between
    torch.testing.assert_close(table[:, -1], old[:, -1])
    torch.testing.assert_close(table[:, 6], (old[:, 2] + old[:, 3]) / 2)  # column 6 of 13 sits at 2.5 of 6
    assert torch.equal(long.pos_embed[:, 0], pre[:, 0])         # the [CLS] row
    x = torch.randn(2, 1, 80, 208)
    assert Classifier(enc, 3, ClassifierConfig(n_frames=208)).eval()(x).shape == (2, 3)


def test_widths_and_options_the_encoder_cannot_take_are_config_errors():
    enc = tiny_encoder(96)
    with pytest.raises(ConfigError, match=r"model.n_frames: 100 frames is not a whole number of 16-frame .*96 or 112"):
        Classifier(enc, 3, ClassifierConfig(n_frames=100))
    with pytest.raises(ConfigError, match="no \\[CLS\\] token"):
        Classifier(replace(enc, use_cls=False), 3, ClassifierConfig(pool="cls"))
    with pytest.raises(ConfigError, match="model.patchout: 30 of the 30 patches"):
        Classifier(enc, 3, ClassifierConfig(patchout=30))


def test_new_head_starts_near_zero_and_cls_pooling_reads_the_cls_token():
    model = Classifier(tiny_encoder(), 4, ClassifierConfig(pool="cls")).eval()
    assert model.head.weight.abs().max() < 1e-4 and model.head.bias.abs().max() == 0
    seen = []
    model.head_norm.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    x = torch.randn(2, 1, 80, 96)
    model(x)
    torch.testing.assert_close(seen[0], model.encoder(x)[:, 0])


def test_layer_decay_gives_each_layer_its_learning_rate(tmp_path):
    torch.manual_seed(0)
    model = Classifier(tiny_encoder(), 3, ClassifierConfig())
    decay, depth = 0.75, 2
    groups = param_groups(model, ft_config().train, partial(layer_scale, depth=depth, decay=decay))
    cfg = ft_config().train
    trainer = Trainer(model, groups, cfg, Dist(), steps_per_epoch=4, run_dir=tmp_path, progress=False)
    trainer.step = trainer.warmup_steps  # at the peak
    x, y = torch.randn(16, 1, 80, 96), torch.randint(0, 3, (16,))
    _, lr = trainer.train_step(iter([(x, y)]), lambda net, b, s, m: torch.nn.functional.cross_entropy(net(b[0]), b[1]))
    assert lr == pytest.approx(cfg.blr * cfg.batch_size / 256)
    lr_of = {id(p): g["lr"] for g in trainer.optimizer.param_groups for p in g["params"]}
    expected_layer = {"encoder.patch_embed.proj.weight": 0, "encoder.cls_token": 0, "encoder.blocks.0.attn.qkv.weight": 1,
                      "encoder.blocks.1.mlp.fc2.bias": 2, "encoder.norm.weight": 3, "head_norm.bias": 3, "head.weight": 3}
    params = dict(model.named_parameters())
    for name, layer in expected_layer.items():
        assert lr_of[id(params[name])] == pytest.approx(lr * decay ** (depth + 1 - layer)), name
    assert len(lr_of) == len(params)


# --- augmentations ----------------------------------------------------------------------------


def test_augmentations_keep_shapes_and_are_seeded():
    g = torch.Generator().manual_seed(0)
    waves, y = torch.randn(8, 1600), torch.eye(4)[torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])]
    mixed, targets, perm = mixup(waves, y, 0.3, g, remove_mean=True)
    assert mixed.shape == waves.shape and targets.shape == y.shape
    torch.testing.assert_close(targets.sum(1), torch.ones(8))
    assert (targets.max(1).values >= 0.5 - 1e-6).all()               # lambda = max(lambda, 1 - lambda)
    lam = targets[torch.arange(8), y.argmax(1)]                      # the own clip's share (distinct classes)
    own = lam.view(8, 1) * (waves - waves.mean(1, keepdim=True))
    other = (1 - lam.view(8, 1)) * (waves - waves.mean(1, keepdim=True))[perm]
    same_class = y.argmax(1) == y[perm].argmax(1)
    torch.testing.assert_close(mixed[~same_class], (own + other)[~same_class])
    x = torch.randn(8, 1, 80, 100)
    masked = spec_augment(x, 0.375, 0.2, g)
    assert masked.shape == x.shape
    zero_rows = (masked == 0).all(dim=3).sum(dim=(1, 2))             # frequency bands masked over all time
    zero_cols = (masked == 0).all(dim=2).sum(dim=(1, 2))
    assert (zero_rows < 30).all() and (zero_cols < 20).all() and zero_rows.sum() > 0 and zero_cols.sum() > 0
    gained = random_gain(waves, 7.0, g)
    ratio = (gained / waves)[:, 0]
    assert gained.shape == waves.shape and ((ratio > 10 ** (-7 / 20)) & (ratio < 10 ** (7 / 20))).all()
    again = spec_augment(x, 0.375, 0.2, torch.Generator().manual_seed(5))
    assert torch.equal(again, spec_augment(x, 0.375, 0.2, torch.Generator().manual_seed(5)))


@pytest.mark.parametrize("where", ["waveform", "spectrogram"])
def test_the_pooling_reads_every_frame_that_mixup_filled(tmp_path, where):
    # Short clips of different lengths, mixed: a clip mixed with a longer one holds audio past its
    # own length, and the frames the classifier pools (`real`) must cover it.
    ck = load(random_checkpoint(tmp_path / "ckpt"))
    rng = np.random.default_rng(0)
    waves = [rng.normal(0, 0.1, 1600 * (1 + i % 5)).astype(np.float32) for i in range(40)]
    task = Task.from_arrays("short", waves, [str(i % 4) for i in range(40)], ["train"] * 30 + ["test"] * 10,
                            sample_rate=16000)
    cfg = ft_config(augment=dict(mixup=where, mixup_alpha=1.0, freq_mask=0, time_mask=0)).for_task(task.kind)
    cfg.model.n_frames = 96
    trainer = FoldTrainer(cfg, ck, task, task.splits()[0], lambda idx: [task.waves[i] for i in idx],
                          tmp_path / "run", Dist(), progress=False)
    seen = {}

    def net(x, generator=None, real=None):
        seen.update(x=x, real=real)
        return torch.zeros(len(x), 4, requires_grad=True)
    trainer.loss(net, trainer.epoch_data(0)[0], step=0, micro_step=0)
    x, real = seen["x"][:, 0], seen["real"]
    filled = (x != 0).any(dim=1)                                       # (B, T) frames holding audio
    last = torch.where(filled.any(1), 95 - filled.flip(1).int().argmax(1), -1)
    assert (last < real).all()


def test_patchout_and_drop_path_act_in_training_only():
    torch.manual_seed(0)
    model = Classifier(tiny_encoder(), 3, ClassifierConfig(patchout=10, drop_path=0.5))
    tokens = []
    model.encoder.blocks[0].register_forward_hook(lambda m, inp, out: tokens.append(out.shape[1]))
    x = torch.randn(4, 1, 80, 96)
    train_out = model.train()(x, generator=torch.Generator().manual_seed(1))
    assert train_out.shape == (4, 3) and tokens == [1 + 30 - 10]
    ids = model.patchout_ids(4, torch.Generator().manual_seed(1))
    assert ids.shape == (4, 20) and (ids.diff(dim=1) > 0).all()      # distinct, in position order
    model.eval()
    assert torch.equal(model(x, generator=torch.Generator().manual_seed(2)), model(x))
    assert tokens[-1] == 31
    # prediction is the eval path whatever mode the caller left the model in
    predictor = Predictor(model, RunConfig().frontend, [-8.0, 4.5], ["a", "b", "c"], "multiclass")
    wave = torch.randn(16000) * 0.1
    model.train()
    assert torch.equal(predictor.predict(wave, 16000), predictor.predict(wave, 16000))
    assert model.training


def test_balanced_sampler_weights():
    y = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [1, 0, 1]])     # counts 3, 1, 2
    w = balanced_weights(y)
    np.testing.assert_allclose(w, [1000 / 103, 1000 / 103 + 1000 / 101, 1000 / 102, 1000 / 103 + 1000 / 102])
    np.testing.assert_allclose(balanced_weights(np.array([0, 0, 1])), [1000 / 102, 1000 / 102, 1000 / 101])


# --- the recipe ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_finetuning_learns_and_beats_the_frozen_probe(finetuned):
    out, report = finetuned
    fold = report["folds"][0]
    records = [json.loads(line) for line in (out / "model" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20])
    assert fold["test"] > 3 * report["chance"]
    assert report["fine_tuned"]["mean"] > report["frozen_probe"]["mean"] + 0.05, report
    validation = [r["accuracy"] for r in records if r.get("event") == "validation"]
    assert len(validation) == 20 and fold["valid"] == max(validation)
    for name in ("report.json", "report.md", "curves.png", "confusion.png", "config.json", "probe/report.json"):
        assert (out / name).is_file(), name
    assert "frozen probe" in (out / "report.md").read_text()
    probe_task = json.loads((out / "probe" / "report.json").read_text())["tasks"]["synth"]
    assert report["task"]["notes"] == probe_task["notes"] and report["chance"] == probe_task["chance"]


@pytest.mark.slow
def test_finetuned_checkpoint_describes_itself_and_loads_as_a_predictor(finetuned, pretrained):
    out, report = finetuned
    ck = load(out)
    assert ck.path == out / "model" / "checkpoints" / "best"
    assert ck.finetune.labels == list(synth.CLASSES) and ck.finetune.kind == "multiclass"
    assert ck.finetune.config.model.n_frames == 208 and ck.finetune.config.loss == "ce"
    assert ck.config.model == load(pretrained).config.model   # the pre-trained sections unchanged
    assert ck.step == report["folds"][0]["best_step"]
    assert isinstance(ck.model, Classifier)
    assert not any(k.startswith("decoder") for k in ck.model.state_dict())
    model = specmae.load(out)
    assert isinstance(model, Predictor) and model.labels == list(synth.CLASSES)
    assert model.embed(torch.zeros(16000), 16000).clip.shape == (5 * 48,)  # still an embedder


@pytest.mark.slow
def test_predict_on_clips_shorter_and_longer_than_the_training_length(finetuned):
    out, _ = finetuned
    model = specmae.load(out)
    waves, labels = synth.make_corpus(3, seed=99, duration=6.0)
    short = model.predict(waves[0][:8000], 16000)                    # 0.5 s: one padded window
    assert short.shape == (12,) and float(short.sum()) == pytest.approx(1.0, abs=1e-5)
    long = model.predict(waves[1], 16000)                            # 6 s = 601 frames: 3 windows
    window = model.window_frames * 160                               # samples per 208 frames
    lms = model.frontend(torch.from_numpy(waves[1]))
    pieces = [model.predict_lms([model.norm_stats.apply(lms[:, k * 208:(k + 1) * 208])]) for k in range(3)]
    frames = torch.tensor([208.0, 208.0, 601 - 416.0])
    expected = sum(p[0] * f for p, f in zip(pieces, frames)) / frames.sum()
    torch.testing.assert_close(long, expected, rtol=1e-5, atol=1e-6)
    batch = model.predict([waves[0][:8000], waves[1], waves[2][:window]], 16000)
    assert batch.shape == (3, 12)
    torch.testing.assert_close(batch[:2], torch.stack([short, long]), rtol=1e-5, atol=1e-6)
    resampled = model.predict(waves[2][:window * 2], 32000)          # 32 kHz input is resampled
    assert resampled.shape == (12,)


@pytest.mark.slow
def test_multilabel_task_trains_with_bce_and_balanced_sampling(tmp_path):
    waves, labels = synth.make_corpus(160, seed=4)
    mixed, tags = [], []
    for i in range(0, 160, 2):                                       # pairs of clips: one or two labels
        both = labels[i] != labels[i + 1] and i % 4 == 0
        mixed.append(waves[i] + (waves[i + 1] if both else 0))
        tags.append(sorted({synth.CLASSES[labels[i]], synth.CLASSES[labels[i + 1]]}) if both
                    else [synth.CLASSES[labels[i]]])
    task = Task.from_arrays("mix", mixed, tags, ["test" if i % 5 == 4 else "train" for i in range(80)],
                            sample_rate=16000, classes=synth.CLASSES)
    assert task.kind == "multilabel" and task.metric == "mAP"
    ckpt = random_checkpoint(tmp_path / "ckpt")
    report = finetune(ft_config(train=dict(epochs=2), probe="none"), ckpt, task, tmp_path / "run", progress=False)
    config = report["config"]
    assert (config["loss"], config["sampler"], config["label_smoothing"]) == ("bce", "balanced", 0.0)
    assert report["frozen_probe"] is None and report["folds"][0]["confusion"] is None
    assert 0 < report["fine_tuned"]["mean"] <= 1
    predictor = specmae.load(tmp_path / "run")
    probs = predictor.predict(mixed[0], 16000)
    assert predictor.kind == "multilabel" and probs.shape == (12,) and ((probs > 0) & (probs < 1)).all()
    assert not (tmp_path / "run" / "confusion.png").exists()


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path):
    ckpt = random_checkpoint(tmp_path / "ckpt")
    task = synth_task(60, duration=1.2)
    cfg = ft_config(train=dict(epochs=3, checkpoint_every=2, log_every=2), probe="none",
                    model=dict(patchout=5, pool_padding=True), lp_ft=False,
                    prefer="finetuned")  # the recipe of runs written before those fields
    full = finetune(cfg, ckpt, task, tmp_path / "full", progress=False)
    assert finetune(cfg, ckpt, task, tmp_path / "cut", progress=False, max_steps=5) is None

    def logged(run):  # every record but its wall-time throughput
        lines = (run / "model" / "log.jsonl").read_text().splitlines()
        return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in map(json.loads, lines)]
    # 2 steps per epoch, a loss record every 2 steps: step 5 is inside epoch 2 and its log interval
    assert [(r.get("event"), r["step"]) for r in logged(tmp_path / "full")] == [
        ("epoch", 0), (None, 2), ("validation", 2), ("epoch", 2), (None, 4), ("validation", 4),
        ("epoch", 4), (None, 6), ("validation", 6)]
    assert [(r.get("event"), r["step"]) for r in logged(tmp_path / "cut")][-2:] == [("epoch", 4), (None, 5)]
    for field in ("decay_tokens", "scale", "min_steps", "lp_ft", "prefer", "pool_padding"):  # a run started
        written_before(tmp_path / "cut", field)                      # before the fields resumes as it was
    assert specmae.load(tmp_path / "cut" / "model").classifier.cfg.pool_padding
    resumed = finetune(cfg, ckpt, task, tmp_path / "cut", resume=True, progress=False)
    assert resumed["folds"][0]["test"] == full["folds"][0]["test"]
    a, b = load(tmp_path / "full"), load(tmp_path / "cut")
    for name, value in a.model.state_dict().items():
        assert torch.equal(b.model.state_dict()[name], value), name
    # the resumed run re-enters epoch 2 without logging its start again
    assert logged(tmp_path / "cut") == logged(tmp_path / "full")
    with pytest.raises(ConfigError, match=r"--resume with other settings.*finetune.train.epochs: 3 then, 4 now"):
        finetune(ft_config(train=dict(epochs=4)), ckpt, task, tmp_path / "cut", resume=True, progress=False)
    with pytest.raises(OutputError, match=r"already holds a fine-tuning run \(finished folds: model\).*--resume"):
        finetune(cfg, ckpt, task, tmp_path / "full", progress=False)


def test_scale_auto_fits_batch_and_schedule_to_the_task_size_and_maskspec_keeps_its_recipe():
    base = FinetuneConfig()
    small = base.for_size(115)                       # 14 steps of 8 per epoch, 80 epochs: 1,120 steps
    assert (small.train.batch_size, small.train.epochs, small.train.warmup_epochs) == (8, 80, 5)
    tiny = base.for_size(20)                         # 2 steps per epoch: stretched to 1,000 steps
    assert (tiny.train.batch_size, tiny.train.epochs, tiny.train.warmup_epochs) == (8, 500, 31.25)
    assert base.for_size(240).train.batch_size == 16
    assert (small.augment.mixup_alpha, small.augment.time_mask) == pytest.approx((0.3 * 115 / 2000, 0.192 * 115 / 2000))
    assert base.for_size(5000).to_dict() == base.to_dict()
    maskspec = compose([read_config_file("maskspec-finetune")], FinetuneConfig)
    assert (maskspec.scale, maskspec.lp_ft) == ("none", False)
    assert maskspec.for_size(20).to_dict() == maskspec.to_dict()
    assert maskspec.train == FinetuneConfig().train and maskspec.model == ClassifierConfig()
    assert FinetuneConfig().model.pool == "freq"
    with pytest.raises(ConfigError, match="prefer"):
        FinetuneConfig.from_dict(dict(prefer="newest"))


def test_linear_probe_head_folded_into_the_classifier_gives_the_probes_logits():
    torch.manual_seed(0)
    model = Classifier(tiny_encoder(), 4).eval()
    x = torch.randn(40, 1, 80, 96)
    y = np.arange(40) % 4
    with torch.no_grad():
        z = model.features(x).numpy()
    z = z * np.linspace(0.5, 3, z.shape[1], dtype=np.float32) + 2  # standardisation must matter
    result = train_probe(z, y, z, y, z, y, kind="multiclass", metric="accuracy", n_classes=4,
                         config=replace(GRIDS["linear"], max_epochs=30, precision="fp32"))
    model.load_probe_head(result.head, result.mean, result.std)   # as fine-tuning does it
    weight, bias = model.head.weight.detach(), model.head.bias.detach()
    with torch.no_grad():
        ours = torch.from_numpy(z) @ weight.T + bias
        theirs = result.head(torch.from_numpy(((z - result.mean) / result.std).astype(np.float32)))
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(theirs, torch.zeros_like(theirs))
    with torch.no_grad():  # the classifier itself, on the unscaled features
        torch.testing.assert_close(model(x), model.features(x) @ weight.T + bias)


def test_an_mlp_probe_head_in_the_classifier_gives_the_probes_outputs_and_round_trips(tmp_path):
    ck = load(random_checkpoint(tmp_path / "ck"))
    grid = replace(GRIDS["full"], heads=("mlp1",), hidden=32, max_epochs=30, precision="fp32")
    cfg = ClassifierConfig(pool="freq", head="mlp1", head_hidden=32, n_frames=96)
    model = Classifier(ck.config.model.encoder, 4, cfg).eval()
    model.encoder.load_state_dict(ck.model.encoder.state_dict())
    x = torch.randn(40, 1, 80, 96)
    y = np.arange(40) % 4
    with torch.no_grad():
        z = model.features(x).numpy()
    result = train_probe(z, y, z, y, z, y, kind="multiclass", metric="accuracy", n_classes=4, config=grid)
    bn = result.head[1]
    assert result.chosen.head == "mlp1" and not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    model.load_probe_head(result.head, result.mean, result.std)
    with torch.no_grad():
        theirs = result.head(torch.from_numpy(((z - result.mean) / result.std).astype(np.float32)))
        torch.testing.assert_close(model(x), theirs, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(torch.softmax(theirs, -1).numpy(), result.test_probs, atol=1e-4)
    with pytest.raises(ValueError, match="does not fit this classifier's linear head"):
        Classifier(ck.config.model.encoder, 4, replace(cfg, head="linear")).load_probe_head(
            result.head, result.mean, result.std)
    # saved as fine-tuning saves checkpoints/probe: the config names the head, checkpoint.load rebuilds it
    info = FinetuneInfo(["a", "b", "c", "d"], "multiclass", "accuracy", FinetuneConfig(model=cfg), "t", "model")
    meta = {k: v for k, v in ck.to_json().items() if k not in ("step", "epoch")}
    save_checkpoint(tmp_path / "probe", model.state_dict(), dict(meta, finetune=info.to_dict(), step=0, epoch=0.0))
    predictor = specmae.load(tmp_path / "probe")
    assert isinstance(predictor, Predictor) and predictor.classifier.cfg.head == "mlp1"
    probs = predictor.predict_lms(list(x[:, 0]))
    torch.testing.assert_close(probs, torch.softmax(theirs, -1), atol=1e-4, rtol=1e-4)


def test_freq_pooling_is_the_frozen_clip_embedding_that_evaluate_probes(tmp_path):
    ck = load(random_checkpoint(tmp_path / "ck"))
    model = Classifier(ck.config.model.encoder, 3, ClassifierConfig(pool="freq")).eval()
    model.encoder.load_state_dict(ck.model.encoder.state_dict())
    lms = torch.randn(2, 80, 96) * 4.5 - 8.0                  # one window of raw log-mel per clip
    seen = []
    model.head_norm.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    with torch.no_grad():
        model((lms[:, None] + 8.0) / 4.5)                      # the checkpoint's statistics
    embedder = specmae.features.Embedder(ck.model.encoder, ck.config.frontend, ck.norm_stats)
    clip = embedder.embed_lms(lms).clip
    assert seen[0].shape == clip.shape == (2, 5 * 48)
    torch.testing.assert_close(seen[0], clip, atol=1e-4, rtol=1e-4)
    # Clips shorter than the window: zero-padded to it (0 is the corpus mean), pooled over the
    # patch columns that cover audio only, as the embedding is; before, the padding was averaged in.
    lengths = torch.tensor([40, 17])                          # 3 and 2 of the 6 patch columns
    padded = ((lms[:, None] + 8.0) / 4.5) * (torch.arange(96) < lengths[:, None, None, None])
    with torch.no_grad():
        model(padded, real=lengths)
    clip = embedder.embed_lms([lms[0, :, :40], lms[1, :, :17]]).clip
    torch.testing.assert_close(seen[1], clip, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        model(padded)                                          # no `real`: every column
        old = Classifier(ck.config.model.encoder, 3, ClassifierConfig(pool="freq", pool_padding=True)).eval()
        old.encoder.load_state_dict(ck.model.encoder.state_dict())
        old.head_norm.register_forward_hook(lambda m, args, out: seen.append(args[0]))
        old(padded, real=lengths)
    assert not torch.allclose(seen[2], seen[1], atol=1e-3)
    torch.testing.assert_close(seen[3], seen[2])
    for pool in ("mean", "freq"):  # the columns of the padding do not reach the head
        m = Classifier(ck.config.model.encoder, 3, ClassifierConfig(pool=pool)).eval()
        m.encoder.load_state_dict(ck.model.encoder.state_dict())
        x = padded[:1]
        with torch.no_grad():
            assert torch.equal(m.features(x, real=lengths[:1]), m.features(x, real=torch.tensor([48])))  # 3 columns
            assert not torch.allclose(m.features(x, real=lengths[:1]), m.features(x), atol=1e-3)
    patched = Classifier(ck.config.model.encoder, 3, ClassifierConfig(pool="freq", patchout=20)).train()
    assert patched.features(torch.randn(2, 1, 80, 96), torch.Generator().manual_seed(0)).isfinite().all()


def tone_or_noise(n: int, lead: bool = False) -> Task:
    """n clips of 0.96 s (one window of the 96-frame test models), a tone (class 'tone') or loud
    noise ('noise'): easy for a probe even on a random encoder. lead: each clip preceded by the same
    0.96 s of quiet noise, so that its first window tells nothing; every fifth clip is test."""
    rng = np.random.default_rng(0)
    quiet, t = rng.normal(0, 0.01, 15360).astype(np.float32), np.arange(15360) / 16000
    waves = [np.sin(2 * np.pi * rng.uniform(300, 3000) * t) * 0.5 if i % 2 else rng.normal(0, 0.3, len(t))
             for i in range(n)]
    return Task.from_arrays("tone-or-noise", [np.concatenate([quiet, w] if lead else [w]).astype(np.float32)
                                              for w in waves],
                            ["tone" if i % 2 else "noise" for i in range(n)],
                            ["test" if i % 5 == 4 else "train" for i in range(n)], sample_rate=16000)


def test_the_probe_classifier_learns_from_every_window_of_a_long_clip(tmp_path):
    # Clips of two windows, the first the same in every clip: trained on first windows only, the
    # probe classifier could not beat chance (it did not, before it read every window).
    cfg = ft_config(train=dict(epochs=1, blr=1e-9, min_lr=0), probe="linear", lp_ft=False, model=dict(pool="freq"))
    task = tone_or_noise(60, lead=True)
    fold = finetune(cfg, random_checkpoint(tmp_path / "ckpt"), task, tmp_path / "run", progress=False)["folds"][0]
    assert fold["probe_test"] > 0.9, fold   # chance: 0.5


def test_the_probe_classifier_reads_windows_of_at_least_half_a_width_and_every_first_one(tmp_path):
    ck = load(random_checkpoint(tmp_path / "ckpt"))
    rng = np.random.default_rng(0)
    # 193 frames: windows of 96, 96 and 1 frames; 40 frames: one short first window; 144: 96 + 48
    waves = [rng.normal(0, 0.1, n).astype(np.float32) for n in (30720, 6400, 22880) * 4]
    task = Task.from_arrays("lengths", waves, ["a", "b", "c"] * 4, ["train"] * 9 + ["test"] * 3, sample_rate=16000)
    cfg = ft_config(train=dict(batch_size=4)).for_task(task.kind)
    cfg.model.n_frames = 96
    trainer = FoldTrainer(cfg, ck, task, task.splits()[0], lambda idx: [task.waves[i] for i in idx],
                          tmp_path / "run", Dist(), progress=False)
    features, owners = trainer.window_features(np.arange(3))
    assert owners.tolist() == [0, 0, 1, 2, 2] and features.shape[0] == 5


def test_the_probe_replaces_the_finetuned_model_only_when_better_on_validation_beyond_chance():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    right, wrong = np.eye(4)[y], np.eye(4)[(y + 1) % 4]
    tuned = np.where(rng.random((400, 1)) < 0.9, right, wrong)                     # 90 % right
    better = np.where(rng.random((400, 1)) < 0.98, right, wrong)                   # 98 % right
    slightly = tuned.copy()          # right on 6 clips that `tuned` misses, wrong on 3 it gets: +0.75 points
    fixed, broken = np.flatnonzero(tuned.argmax(1) != y)[:6], np.flatnonzero(tuned.argmax(1) == y)[:3]
    slightly[fixed], slightly[broken] = right[fixed], wrong[broken]
    assert probe_is_better("accuracy", y, tuned, better, seed=0)
    assert not probe_is_better("accuracy", y, tuned, slightly, seed=0)
    assert not probe_is_better("accuracy", y, tuned, tuned, seed=0)
    assert not probe_is_better("accuracy", y, better, tuned, seed=0)
    multi = (rng.random((60, 3)) < 0.3).astype(np.float32)                         # some resamples lack positives
    assert probe_is_better("mAP", multi, rng.random((60, 3)), multi * 0.8 + 0.1, seed=0)


def test_a_finetuning_that_loses_to_the_probe_says_so_and_predicts_with_the_probe(tmp_path):
    ckpt = random_checkpoint(tmp_path / "ckpt")
    task = tone_or_noise(100)
    # A learning rate of almost 0 and a new head: the fine-tuned model stays at chance, and the
    # probe classifier is right on every validation clip, beyond chance. The 'hear' grid has MLP
    # heads only, so the probe classifier is an MLP on the frozen encoder.
    cfg = ft_config(train=dict(epochs=1, blr=1e-9, min_lr=0), lp_ft=False, probe="hear", model=dict(pool="freq"))
    report = finetune(cfg, ckpt, task, tmp_path / "run", progress=False)
    fold = report["folds"][0]
    assert fold["probe_valid"] > fold["valid"] and fold["kept"] == "probe" and fold["probe_head"] in ("mlp1", "mlp2")
    assert report["used"]["mean"] == fold["probe_test"] == report["probe_classifier"]["mean"]
    text = (tmp_path / "run" / "report.md").read_text()
    assert "Fine-tuning lost to the frozen probe" in text and f"probe classifier ({fold['probe_head']})" in text
    ck = load(tmp_path / "run")
    assert ck.path == tmp_path / "run" / "model" / "checkpoints" / "probe"
    assert ck.finetune.config.model.head == fold["probe_head"] and ck.finetune.config.model.head_hidden == 1024
    start = load(ckpt).model.encoder.state_dict()
    for name, value in ck.model.encoder.state_dict().items():      # the frozen pre-trained encoder
        assert torch.equal(start[name], value), name
    predictor = specmae.load(tmp_path / "run")
    assert isinstance(predictor, Predictor) and predictor.labels == list(task.classes)
    assert predictor.classifier.cfg.head == fold["probe_head"]
    # LP-FT: with the same (null) learning rate, fine-tuning starts from and stays at the probe's head
    lpft = finetune(replace(cfg, lp_ft=True, probe="none"), ckpt, task, tmp_path / "lpft", progress=False)
    assert lpft["folds"][0]["probe_head"] == "linear"
    assert lpft["folds"][0]["valid"] == lpft["folds"][0]["probe_valid"]
    tuned, probe = (load_checkpoint(tmp_path / "lpft" / "model" / "checkpoints" / n)[0] for n in ("best", "probe"))
    torch.testing.assert_close(tuned["head.weight"], probe["head.weight"], atol=1e-6, rtol=0)
    # `prefer: finetuned` keeps the fine-tuned model whatever the scores; with LP-FT and an MLP
    # winner, fine-tuning starts from the 'linear' grid's head (a new head would be near 0)
    again = finetune(replace(cfg, prefer="finetuned", lp_ft=True), ckpt, task, tmp_path / "ft", progress=False)
    assert again["folds"][0]["kept"] == "best" and load(tmp_path / "ft").path.name == "best"
    tuned = load_checkpoint(tmp_path / "ft" / "model" / "checkpoints" / "best")[0]
    torch.testing.assert_close(tuned["head.weight"], probe["head.weight"], atol=1e-6, rtol=0)


# --- bad input ----------------------------------------------------------------------------------


def test_bad_input_is_refused_before_anything_is_written(tmp_path):
    ckpt = random_checkpoint(tmp_path / "ckpt")
    task = synth_task(40, duration=1.0)
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="model.n_frames: 100 frames"):
        finetune(ft_config(model=dict(n_frames=100)), ckpt, task, out, progress=False)
    with pytest.raises(ConfigError, match="model.head: 'mlp1'; fine-tuning trains a linear head"):
        finetune(ft_config(model=dict(head="mlp1")), ckpt, task, out, progress=False)
    with pytest.raises(ConfigError, match=r"train.batch_size: 64 is more than the \d+ training clips of synth"):
        finetune(ft_config(train=dict(batch_size=64)), ckpt, task, out, progress=False)
    multi = Task.from_arrays("multi", task.waves[:20], [["harmonic", "vowel_a"]] * 10 + [["harmonic"]] * 10,
                             ["train"] * 15 + ["test"] * 5, sample_rate=16000)
    with pytest.raises(ConfigError, match="loss: 'ce' .* single-label loss, and this task is multi-label"):
        finetune(ft_config(loss="ce"), ckpt, multi, out, progress=False)
    accuracy = Task.from_arrays("multi", multi.waves, [list(l) for l in multi.labels], multi.groups,
                                sample_rate=16000, metric="accuracy")
    with pytest.raises(TaskError, match="metric 'accuracy' is single-label"):
        finetune(ft_config(), ckpt, accuracy, out, progress=False)
    with pytest.raises(TaskError, match=r"labels \['whistle'\] are not in its class list"):
        Task.from_arrays("t", task.waves[:2], ["harmonic", "whistle"], ["train", "test"], sample_rate=16000,
                         classes=["harmonic"])
    decoder_only = tmp_path / "decoder-only"
    state = {k: v for k, v in build_mae(load(ckpt).config.model).state_dict().items() if not k.startswith("encoder.")}
    save_checkpoint(decoder_only, state, json.loads((ckpt / "config.json").read_text()))
    with pytest.raises(CheckpointError, match="no encoder weights"):
        finetune(ft_config(), decoder_only, task, out, progress=False)
    assert not out.exists()


# --- the commands -------------------------------------------------------------------------------


def specmae_cli(*args, check=True, env=None):
    proc = subprocess.run([sys.executable, "-m", "specmae.cli", *map(str, args)], capture_output=True, text=True,
                          env=env)
    if check and proc.returncode:
        raise AssertionError(proc.stderr[-3000:])
    return proc


CLI_TINY = ["--batch-size", "8", "--workers", "0", "--quiet", "--blr", "0.05", "--set", "train.warmup_epochs=1",
            "--set", "scale=none"]


@pytest.fixture(scope="module")
def corpus_task(tmp_path_factory) -> Path:
    """60 clips of 1.2 s written as files, meta.csv with path,label,split (every fifth clip test)."""
    return synth.write_corpus(tmp_path_factory.mktemp("corpus"), 60, seed=6, duration=1.2)


@pytest.mark.slow
def test_cli_finetune_then_predict_files_of_any_length_reporting_unreadable_ones(tmp_path, corpus_task):
    ckpt = random_checkpoint(tmp_path / "ckpt")
    run = tmp_path / "run"
    proc = specmae_cli("finetune", ckpt, corpus_task, "label=label", "--out", run, "--epochs", "2", "--probe", "none",
                       "--set", "layer_decay=0.65", *CLI_TINY)
    assert "| model |" in proc.stdout and "report:" in proc.stdout
    assert json.loads((run / "config.json").read_text())["finetune"]["layer_decay"] == 0.65
    audio = tmp_path / "audio"
    audio.mkdir()
    long = np.concatenate([synth.make_clip(0, np.random.default_rng(i)) for i in range(3)])  # 6.2 s
    sf.write(audio / "long.wav", long, 16000)
    sf.write(audio / "short.flac", long[:4000], 16000)                                       # 0.25 s
    (audio / "broken.wav").write_text("not audio")
    preds = tmp_path / "preds.csv"
    proc = specmae_cli("predict", run, audio, "--out", preds, "--top-k", "3", "--quiet", check=False)
    assert proc.returncode == 1 and "broken.wav" in proc.stdout and "predicted 2 files" in proc.stdout
    rows = list(csv.reader(open(preds)))
    assert rows[0] == ["path", "label_1", "score_1", "label_2", "score_2", "label_3", "score_3"]
    assert [r[0] for r in rows[1:]] == ["long.wav", "short.flac"]
    assert all(r[1] in {str(i) for i in range(12)} and 0 <= float(r[2]) <= 1 and float(r[2]) >= float(r[4])
               for r in rows[1:])
    assert "broken.wav" in (tmp_path / "preds.csv.errors.tsv").read_text()
    (audio / "broken.wav").unlink()
    proc = specmae_cli("predict", run, audio, "--out", preds, "--top-k", "3", "--quiet")
    assert "skipped 2 already done" in proc.stdout and not (tmp_path / "preds.csv.errors.tsv").exists()
    proc = specmae_cli("predict", ckpt, audio, "--out", tmp_path / "p2.csv", check=False)
    assert proc.returncode == 2 and "fine-tune it first" in proc.stderr


@pytest.mark.slow
def test_cli_bad_input_is_one_line_before_training(tmp_path, corpus_task):
    ckpt = random_checkpoint(tmp_path / "ckpt")
    rows = list(csv.reader(open(corpus_task)))
    rows[3][1] = ""
    bad = corpus_task.parent / "bad.csv"
    with open(bad, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    for args, message in [((bad,), "line 4: empty label"),
                          ((corpus_task, "label=missing"), "the label column 'missing'"),
                          ((corpus_task, "--frames", "100"), "model.n_frames: 100 frames is not a whole number"),
                          ((corpus_task, "type=multilabel", "--set", "loss=ce"), "single-label loss")]:
        proc = specmae_cli("finetune", ckpt, *args, "--out", tmp_path / "run", *CLI_TINY, check=False)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_kill_minus_9_then_resume_matches_uninterrupted(tmp_path, corpus_task):
    """A real fine-tuning process killed with SIGKILL mid-run resumes and ends with the same weights."""
    ckpt = random_checkpoint(tmp_path / "ckpt")
    args = [ckpt, corpus_task, "--epochs", "8", "--checkpoint-every", "3", "--probe", "none",
            "--patchout", "4", "--set", "augment.mixup=both", *CLI_TINY]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "specmae.cli", "finetune", *map(str, args), "--out",
                             str(tmp_path / "cut")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    kill_at_checkpoint(proc, tmp_path / "cut" / "model" / "checkpoints", 12, timeout=300)
    assert not (tmp_path / "cut" / "report.json").exists()
    # --resume starts from the run's own options (only those given again are checked against
    # them), and may change how steps are computed: here how often checkpoints are written
    specmae_cli("finetune", ckpt, corpus_task, "--out", tmp_path / "cut", "--resume", "--checkpoint-every", "5",
                "--quiet", env=env)
    specmae_cli("finetune", *args, "--out", tmp_path / "full", env=env)
    for name in ("best", "."):  # the kept checkpoint and the last one
        cut, cut_cfg = load_checkpoint(tmp_path / "cut" / "model" / "checkpoints" / name)
        full, full_cfg = load_checkpoint(tmp_path / "full" / "model" / "checkpoints" / name)
        assert cut_cfg["step"] == full_cfg["step"]
        for key in full:
            torch.testing.assert_close(cut[key], full[key], rtol=0, atol=0, msg=key)
    cut_report = json.loads((tmp_path / "cut" / "report.json").read_text())
    full_report = json.loads((tmp_path / "full" / "report.json").read_text())
    assert cut_report["folds"][0]["test"] == full_report["folds"][0]["test"]
