"""Training engine, driven by a toy classifier recipe: lr groups, accumulation, precision and
clipping, a recipe's records and best checkpoint, resume with its extras."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from specmae.checkpoint import load_checkpoint, load_train_state
from specmae.config import TrainConfig
from specmae.training.engine import Dist, Trainer, param_groups


def toy() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 3))


def toy_data(n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 6) inputs and (n,) labels of 3 classes that a linear model can learn."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=gen)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 1).long()


class Batches(torch.utils.data.Dataset):
    """One epoch of (x, y) micro-batches, in an order fixed by the epoch."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, micro: int, epoch: int):
        self.x, self.y, self.micro = x, y, micro
        self.order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))

    def __len__(self) -> int:
        return len(self.x) // self.micro

    def __getitem__(self, k: int):
        idx = self.order[k * self.micro:(k + 1) * self.micro]
        return self.x[idx], self.y[idx]


def cross_entropy(net, batch, step, micro_step):
    x, y = batch
    return F.cross_entropy(net(x), y)


def trainer_for(run_dir, model, steps_per_epoch=4, resume=False, groups=None, **train) -> Trainer:
    cfg = TrainConfig(**{**dict(epochs=3, warmup_epochs=0, batch_size=8, micro_batch=4, blr=0.5, workers=0,
                                checkpoint_every=4), **train})
    return Trainer(model, groups or param_groups(model, cfg), cfg, Dist(), steps_per_epoch, run_dir,
                   meta=dict(model="toy"), resume=resume, progress=False)


def test_lr_scale_multiplies_each_groups_lr(tmp_path):
    model = toy()
    # parameters of the first layer at half the lr, as layer-wise decay would do
    groups = param_groups(model, TrainConfig(), lr_scale=lambda name: 0.5 if name.startswith("0.") else 1.0)
    assert [(g["lr_scale"], g["weight_decay"], len(g["params"])) for g in groups] == [
        (0.5, 0.05, 1), (0.5, 0.0, 1), (1.0, 0.05, 1), (1.0, 0.0, 3)]
    trainer = trainer_for(tmp_path, model, groups=groups)
    _, lr = trainer.train_step(iter(Batches(*toy_data(), 4, 0)), cross_entropy)
    assert lr == trainer.peak_lr == 0.5 * 8 / 256
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [lr / 2, lr / 2, lr, lr]
    # the scales live in the trainer, not in the optimizer's saved state
    assert all("lr_scale" not in g for g in trainer.optimizer.state_dict()["param_groups"])
    assert [g["lr_scale"] for g in param_groups(model, TrainConfig())] == [1.0, 1.0]


def one_step(run_dir, micro: int) -> tuple[float, list[torch.Tensor], Trainer]:
    """Loss and gradients (as the optimizer sees them) of one step on the same 8 samples."""
    model = toy()
    trainer = trainer_for(run_dir, model, batch_size=8, micro_batch=micro)
    grads = []
    trainer.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: grads.extend(p.grad.clone() for p in model.parameters()))
    x, y = toy_data(8)
    loss, _ = trainer.train_step(iter([(x[i:i + micro], y[i:i + micro]) for i in range(0, 8, micro)]),
                                 cross_entropy)
    return loss, grads, trainer


def test_accumulated_micro_batches_give_the_gradient_of_one_batch(tmp_path):
    big_loss, big, whole = one_step(tmp_path / "whole", 8)
    small_loss, small, split = one_step(tmp_path / "split", 2)
    assert (whole.accum, split.accum) == (1, 4)
    assert small_loss == pytest.approx(big_loss, rel=1e-6)
    for a, b in zip(big, small):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
    assert all(p.grad is None for p in split.model.parameters())  # zeroed for the next step
    assert split.step == 1


def test_bf16_autocast_and_clipping_follow_the_config(tmp_path):
    model = toy()
    trainer = trainer_for(tmp_path, model, bf16=True, clip_grad=1e-3, micro_batch=8)
    dtypes, norms = [], []
    trainer.optimizer.register_step_pre_hook(lambda opt, args, kwargs: norms.append(
        torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item()))

    def loss_fn(net, batch, step, micro_step):
        logits = net(batch[0])
        dtypes.append(logits.dtype)
        return F.cross_entropy(logits, batch[1])

    trainer.train_step(iter([toy_data(8)]), loss_fn)
    assert dtypes == [torch.bfloat16] and norms[0] <= 1e-3 * (1 + 1e-5)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def run_toy(run_dir, max_steps=None, resume=False, log_every=1) -> Trainer:
    """A classifier recipe: evaluate after every epoch, log the score, keep the best checkpoint."""
    x, y = toy_data(32)
    val_x, val_y = toy_data(16, seed=1)
    model = toy()
    trainer = trainer_for(run_dir, model, resume=resume, keep_checkpoints=1, log_every=log_every)

    def evaluate(epoch: int) -> None:
        model.eval()
        with torch.no_grad():
            accuracy = (model(val_x).argmax(1) == val_y).float().mean().item()
        trainer.log(dict(event="validation", step=trainer.step, epoch=epoch, accuracy=accuracy), prefix="val")
        if accuracy > trainer.extras.get("best", -1.0):
            trainer.extras.update(best=accuracy, best_step=trainer.step)
            trainer.checkpoint("best")

    def loss_fn(net, batch, step, micro_step):
        assert net.training, "the engine puts the model back in training mode after the epoch hook"
        return cross_entropy(net, batch, step, micro_step)

    trainer.fit(lambda epoch: Batches(x, y, trainer.micro, epoch), loss_fn, max_steps, on_epoch_end=evaluate)
    return trainer


def records(run_dir) -> list[dict]:
    out = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    for r in out:
        r.pop("samples_per_s", None)  # wall time
    return out


def test_recipe_records_best_checkpoint_and_resumed_extras(tmp_path):
    full = run_toy(tmp_path / "full")
    logged = records(tmp_path / "full")
    # each epoch: its record, 4 steps, then the recipe's validation record at the epoch's last step
    assert [(r.get("event"), r["step"]) for r in logged[:6]] == [
        ("epoch", 0), (None, 1), (None, 2), (None, 3), (None, 4), ("validation", 4)]
    validation = [r for r in logged if r.get("event") == "validation"]
    assert [(r["step"], r["epoch"]) for r in validation] == [(4, 0), (8, 1), (12, 2)]
    assert full.extras["best"] == max(r["accuracy"] for r in validation)
    # the best checkpoint stays beside the rotated ones and carries the extras
    kept = sorted(p.name for p in (tmp_path / "full" / "checkpoints").iterdir())
    assert kept == ["best", "latest", "step-00000012"]
    _, config = load_checkpoint(tmp_path / "full" / "checkpoints" / "best")
    assert config["model"] == "toy" and config["step"] == full.extras["best_step"]
    assert load_train_state(tmp_path / "full" / "checkpoints" / "best")["extras"] == full.extras

    # cut at an epoch's end (its validation ran before the checkpoint), then resume
    run_toy(tmp_path / "cut", max_steps=4)
    resumed = run_toy(tmp_path / "cut", resume=True)
    assert records(tmp_path / "cut") == logged
    assert resumed.extras == full.extras and resumed.step == full.step == 12
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_log_every_k_logs_the_mean_loss_of_each_interval_and_resumes_to_the_same_lines(tmp_path):
    every_step = [r["loss"] for r in records(run_toy(tmp_path / "steps").checkpoints.parent) if "loss" in r]
    assert len(every_step) == 12

    def mean(first: int, last: int) -> float:  # of steps first..last
        return sum(every_step[first - 1:last]) / (last - first + 1)

    def losses(run_dir) -> list[tuple[int, float]]:
        return [(r["step"], r["loss"]) for r in records(run_dir) if "loss" in r]

    # 12 steps, 4 per epoch, a loss record every 3: the logging leaves the training as it was
    run_toy(tmp_path / "full", log_every=3)
    full = records(tmp_path / "full")
    assert losses(tmp_path / "full") == [(3, mean(1, 3)), (6, mean(4, 6)), (9, mean(7, 9)), (12, mean(10, 12))]
    assert [(r["event"], r["step"]) for r in full if "event" in r] == [
        ("epoch", 0), ("validation", 4), ("epoch", 4), ("validation", 8), ("epoch", 8), ("validation", 12)]
    assert [r["lr"] for r in full if "loss" in r] == [r["lr"] for r in records(tmp_path / "steps")
                                                      if "loss" in r and r["step"] % 3 == 0]
    # stopped at step 5, inside epoch 1 and inside the interval 4..6: a provisional record of steps 4-5
    run_toy(tmp_path / "cut", max_steps=5, log_every=3)
    assert losses(tmp_path / "cut") == [(3, mean(1, 3)), (5, mean(4, 5))]
    # resumed from step 5: the provisional record gives way to the interval's, over steps 4-6,
    # and epoch 1, re-entered mid-way, is not logged again
    run_toy(tmp_path / "cut", resume=True, log_every=3)
    assert records(tmp_path / "cut") == full
    # a finished run resumed: nothing to do, nothing dropped
    run_toy(tmp_path / "cut", resume=True, log_every=3)
    assert records(tmp_path / "cut") == full
    # the final step is logged when log_every does not divide the schedule
    run_toy(tmp_path / "five", log_every=5)
    assert losses(tmp_path / "five") == [(5, mean(1, 5)), (10, mean(6, 10)), (12, mean(11, 12))]


def test_a_non_finite_loss_stops_the_run_naming_the_step(tmp_path):
    trainer = trainer_for(tmp_path, toy())
    x, y = toy_data(32)

    def loss_fn(net, batch, step, micro_step):
        return cross_entropy(net, batch, step, micro_step) * (math.inf if step == 2 else 1.0)

    with pytest.raises(FloatingPointError, match="at step 3"):
        trainer.fit(lambda epoch: Batches(x, y, 4, epoch), loss_fn)
