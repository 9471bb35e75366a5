"""Pre-training loop: schedule, checkpoints, resume after kill -9, DDP under torchrun."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import written_before
from specmae.checkpoint import load_checkpoint, load_train_state
from specmae.training.engine import lr_at, param_groups
from specmae.cli import build_parser, pretrain_config
from specmae.config import FinetuneConfig
from specmae.schema import ConfigError
from specmae.training.pretrain import RunConfig, pretrain
from specmae.model.mae import MaskedAutoencoder
from specmae.model.presets import model_config

HERE = Path(__file__).resolve().parent


def tiny_run(**train) -> RunConfig:
    """A model and corpus small enough for a step in milliseconds."""
    model = model_config("80x96p16x16", "tiny", dim=48, depth=2, heads=3,
                         decoder_dim=32, decoder_depth=1, decoder_heads=4)
    cfg = RunConfig(model=model)
    defaults = dict(builtin_clips=48, epochs=3, warmup_epochs=1, batch_size=8, workers=0,
                    checkpoint_every=4, blr=1e-3)
    for key, value in {**defaults, **train}.items():
        setattr(cfg.train, key, value)
    return cfg


def test_lr_schedule_warmup_then_cosine():
    lrs = [lr_at(s, 100, 10, 1.0) for s in range(101)]
    assert lrs[0] == 0 and lrs[5] == pytest.approx(0.5) and lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[55] == pytest.approx(0.5) and lrs[100] == pytest.approx(0.0, abs=1e-12)


def test_weight_decay_groups_follow_the_recipe():
    """Pre-training decays the tokens as the official code does; fine-tuning leaves them out."""
    cfg = tiny_run()
    assert cfg.train.decay_tokens and not FinetuneConfig().train.decay_tokens
    model = MaskedAutoencoder(cfg.model)
    names = {id(p): n for n, p in model.named_parameters()}
    for decay_tokens in (True, False):
        cfg.train.decay_tokens = decay_tokens
        decay, no_decay = param_groups(model, cfg.train)
        assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
        decayed, skipped = ({names[id(p)] for p in g["params"]} for g in (decay, no_decay))
        tokens = {"encoder.cls_token", "mask_token"}
        assert {"encoder.norm.bias", "encoder.blocks.0.attn.q_bias", "encoder.patch_embed.proj.bias"} <= skipped
        assert tokens <= (decayed if decay_tokens else skipped)
        assert {n for n in decayed if model.get_parameter(n).ndim < 2} == set()
        assert decayed - tokens == {n for n, p in model.named_parameters() if p.ndim >= 2} - tokens


def test_bf16_run_learns_and_keeps_fp32_weights(tmp_path):
    # bf16 autocast takes the explicit-matmul attention on the CPU (vit.attention); training
    # through it must still learn, and the stored weights stay float32.
    result = pretrain(tiny_run(epochs=6, bf16=True, log_every=1), tmp_path, progress=False)
    records = [json.loads(l) for l in (tmp_path / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-6:]) < sum(losses[:6])
    state, _ = load_checkpoint(tmp_path)
    assert {t.dtype for t in state.values()} == {torch.float32}
    assert result.step == 6 * (48 // 8)


def test_hint_schedule_beyond_the_run_is_reported(tmp_path, caplog):
    cfg = tiny_run(epochs=1)
    cfg.masking.strategy = "dwm"
    pretrain(cfg, tmp_path / "late", progress=False, max_steps=1)
    assert "every mask is random" in caplog.text
    caplog.clear()
    cfg.masking.hint_start_epoch = 0
    pretrain(cfg, tmp_path / "early", progress=False, max_steps=1)
    assert "every mask is random" not in caplog.text


def test_bf16_on_a_cpu_without_fast_bf16_is_reported(tmp_path, caplog, monkeypatch):
    from specmae.training import engine as module
    monkeypatch.setattr(module, "native_bf16", lambda device: False)
    pretrain(tiny_run(epochs=1, bf16=True), tmp_path / "slow", progress=False, max_steps=1)
    assert "slower than in fp32" in caplog.text
    caplog.clear()
    monkeypatch.setattr(module, "native_bf16", lambda device: True)
    pretrain(tiny_run(epochs=1, bf16=True), tmp_path / "fast", progress=False, max_steps=1)
    assert "slower than in fp32" not in caplog.text


def test_run_writes_checkpoints_logs_and_learns(tmp_path):
    cfg = tiny_run(epochs=6, log_every=6)
    result = pretrain(cfg, tmp_path, progress=False)
    records = [json.loads(l) for l in (tmp_path / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    # a record every 6 steps: the mean loss of those steps
    assert [r["step"] for r in records if "loss" in r] == [6, 12, 18, 24, 30, 36] and result.step == 36
    assert losses[-1] < losses[0]
    assert any(r.get("event") == "epoch" for r in records)
    state, config = load_checkpoint(tmp_path)
    assert config["step"] == result.step and len(config["norm_stats"]) == 2
    assert config["model"] == cfg.model.to_dict()
    for name, value in result.model.state_dict().items():
        assert torch.equal(state[name], value), name
    # only the newest checkpoints are kept, and the pointer names the last one
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*"))
    assert kept == ["step-00000032", "step-00000036"]
    assert list((tmp_path / "tb").iterdir())


def logged(run_dir) -> list[dict]:
    """log.jsonl's records without their wall-time throughput."""
    records = [json.loads(l) for l in (run_dir / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in records]


def test_resume_continues_exactly(tmp_path):
    # 18 steps, 6 per epoch; stopped at step 8, inside epoch 1 and inside the log interval 7..9
    full = pretrain(tiny_run(log_every=3), tmp_path / "full", progress=False)
    pretrain(tiny_run(log_every=3), tmp_path / "cut", progress=False, max_steps=8)
    assert [r["step"] for r in logged(tmp_path / "cut") if "loss" in r] == [3, 6, 8]
    resumed = pretrain(tiny_run(log_every=3), tmp_path / "cut", resume=True, progress=False)
    assert resumed.step == full.step
    for name, value in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    assert [r["step"] for r in logged(tmp_path / "full") if "loss" in r] == [3, 6, 9, 12, 15, 18]
    assert logged(tmp_path / "cut") == logged(tmp_path / "full")


def test_resume_past_a_damaged_checkpoint_still_continues_exactly(tmp_path, caplog):
    full = pretrain(tiny_run(), tmp_path / "full", progress=False)
    pretrain(tiny_run(), tmp_path / "cut", progress=False, max_steps=8)  # checkpoints at steps 4 and 8
    weights = tmp_path / "cut" / "checkpoints" / "step-00000008" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    resumed = pretrain(tiny_run(), tmp_path / "cut", resume=True, progress=False)
    assert "skipping checkpoint" in caplog.text and "step-00000008" in caplog.text
    assert "step-00000004, the newest checkpoint that loads" in caplog.text
    for name, value in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    # the lines logged after step 4 are dropped and logged again, the open interval's mean included
    assert logged(tmp_path / "cut") == logged(tmp_path / "full")


def test_a_run_is_never_trained_over_without_resume_or_overwrite(tmp_path):
    from specmae.files import OutputError
    pretrain(tiny_run(), tmp_path / "run", progress=False, max_steps=4)
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    with pytest.raises(OutputError, match="already holds a run .checkpoints up to step-00000004.*--resume"):
        pretrain(tiny_run(), tmp_path / "run", progress=False)
    changed = tiny_run()
    changed.model.encoder.depth = 3
    with pytest.raises(ValueError, match="model.encoder.depth: 2 then, 3 now"):
        pretrain(changed, tmp_path / "run", resume=True, progress=False)
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == before


def test_a_run_written_before_decay_tokens_resumes_under_its_own_rule(tmp_path):
    """Runs started before `train.decay_tokens` existed left the tokens undecayed: their configs
    read it as false, `specmae pretrain --resume` continues them exactly, and a config asking for
    the new pre-training default is refused."""
    old = tiny_run(epochs=1, decay_tokens=False)
    full = pretrain(old, tmp_path / "full", progress=False)
    pretrain(old, tmp_path / "cut", progress=False, max_steps=4)
    written_before(tmp_path / "cut", "decay_tokens")
    with pytest.raises(ConfigError, match="train.decay_tokens: False then, True now"):
        pretrain(tiny_run(epochs=1), tmp_path / "cut", resume=True, progress=False)
    cfg = pretrain_config(build_parser().parse_args(["pretrain", "--out", str(tmp_path / "cut"), "--resume"]))
    assert cfg.train.decay_tokens is False
    resumed = pretrain(cfg, tmp_path / "cut", resume=True, progress=False)
    assert resumed.step == full.step
    for name, value in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name


def _cli(*args):
    return [sys.executable, "-m", "specmae.cli", *args]


def tiny_cli_args(out, epochs):
    return ["pretrain", "--out", str(out), "--preset", "80x96p16x16", "--size", "tiny", "--quiet",
            "--no-report", "--epochs", str(epochs), "--batch-size", "8", "--workers", "0",
            "--checkpoint-every", "3", "--warmup-epochs", "1", "--set", "train.builtin_clips=48",
            "--set", "model.encoder.depth=2", "--set", "model.decoder.depth=1", "--set", "train.log_every=1"]


@pytest.mark.slow
def kill_at_checkpoint(proc: subprocess.Popen, checkpoints: Path, step: int, timeout: float) -> None:
    """Once the run's checkpoints/latest names step `step` or later, kill -9 `proc`, which must
    still be running then (else its stderr is the failure)."""
    pointer, name = checkpoints / "latest", f"step-{step:08d}"
    deadline = time.time() + timeout
    while time.time() < deadline and not (pointer.is_file() and pointer.read_text().strip() >= name):
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_kill_minus_9_then_resume_matches_uninterrupted(tmp_path):
    """A real process killed with SIGKILL mid-run resumes and ends with the same weights."""
    epochs = 25
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(_cli(*tiny_cli_args(tmp_path / "cut", epochs)), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    kill_at_checkpoint(proc, tmp_path / "cut" / "checkpoints", 12, timeout=120)
    logged = [json.loads(l) for l in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    last_logged = max(r["step"] for r in logged if "loss" in r)
    saved = load_train_state(tmp_path / "cut")["step"]
    assert last_logged - saved < 3 and saved < epochs * 6
    subprocess.run(_cli(*tiny_cli_args(tmp_path / "cut", epochs), "--resume"), env=env, check=True)
    subprocess.run(_cli(*tiny_cli_args(tmp_path / "full", epochs)), env=env, check=True)
    cut, cut_cfg = load_checkpoint(tmp_path / "cut")
    full, full_cfg = load_checkpoint(tmp_path / "full")
    assert cut_cfg["step"] == full_cfg["step"] == epochs * 6
    for name in full:
        torch.testing.assert_close(cut[name], full[name], rtol=0, atol=0, msg=name)


def assert_ranks_trained_alike(folder: Path) -> None:
    """The weights ddp_worker.py saved from ranks 0 and 1: trained away from the init, and equal."""
    r0 = torch.load(folder / "rank0.pt", weights_only=True)
    r1 = torch.load(folder / "rank1.pt", weights_only=True)
    init = MaskedAutoencoder(tiny_run().model).state_dict()  # same seed as the run's init
    assert any(not torch.equal(r0[k], init[k]) for k in r0)  # it trained
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k


@pytest.mark.slow
def test_torchrun_two_processes_hold_identical_weights(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if torch.cuda.device_count() < 2:
        env["CUDA_VISIBLE_DEVICES"] = ""  # two CPU processes over gloo; with 2 GPUs, NCCL
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    str(HERE / "ddp_worker.py"), str(tmp_path)], env=env, check=True, timeout=300)
    assert_ranks_trained_alike(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["train"]["micro_batch"] == 4  # 2 processes x 4 x 2 accumulation steps = 16


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch):
    from specmae.training.engine import init_distributed
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(RuntimeError, match="only 1 GPU.*CUDA_VISIBLE_DEVICES="):
        init_distributed()


def test_masking_strategy_and_hint_schedule_are_recorded(tmp_path):
    cfg = tiny_run(epochs=4)
    cfg.masking.strategy, cfg.masking.hint_start_epoch = "dwm", 2
    pretrain(cfg, tmp_path, progress=False)
    _, config = load_checkpoint(tmp_path)
    assert config["masking"]["strategy"] == "dwm" and config["masking"]["hint_start_epoch"] == 2
    hints = [json.loads(l) for l in (tmp_path / "log.jsonl").read_text().splitlines() if "hint_ratio" in l]
    # h = 1 before the start epoch, then 1 - (e/E)^2
    assert [h["hint_ratio"] for h in hints] == pytest.approx([1.0, 1.0, 0.75, 1 - (3 / 4) ** 2])


def test_impossible_run_configs_fail_at_start(tmp_path):
    cfg = tiny_run()
    cfg.masking.ratio = 1.0
    with pytest.raises(ValueError, match=r"must be in \(0, 1\)"):
        pretrain(cfg, tmp_path, progress=False)
    cfg = tiny_run(batch_size=10, micro_batch=4)
    with pytest.raises(ValueError, match="micro_batch: 4 does not divide train.batch_size = 10"):
        pretrain(cfg, tmp_path, progress=False)
    cfg = tiny_run()
    cfg.masking.strategy = "checkerboard"
    with pytest.raises(ValueError, match="allowed"):
        pretrain(cfg, tmp_path, progress=False)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc thresholds")
def test_freed_memory_is_reused_without_page_faults():
    import resource

    from specmae.allocator import retain_freed_memory
    assert retain_freed_memory()
    # 32 MB blocks: by default glibc maps each one afresh and unmaps it on free. The heap
    # needs a few rounds to settle (alignment splits the first free blocks), then reuses them.
    for _ in range(12):
        torch.empty(8 << 20).fill_(1.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.empty(8 << 20).fill_(1.0)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < 2000  # default: ~40,000
