"""The pre-training loop against the official MSM-MAE `train_one_epoch` (golden data).

The golden run trained each model from its `checkpoint-0.pth` for 3 epochs of 4 iterations, batch
4 and `accum_iter` 2 (12 forward/backward passes, 6 AdamW steps). Here specmae's own engine does
the same: the built-in `msm-mae` recipe's train settings with the run's schedule, the Trainer,
its parameter groups, warm-up and cosine schedule and gradient accumulation, and the recipe's
loss, fed the stored batches and, through the loss's mask source, the stored masking noise.
"""

import json

import numpy as np
import pytest
import torch

from conftest import GOLDEN, golden_model_config
from specmae.checkpoint.official import from_official_state_dict
from specmae.config import RunConfig, compose, read_config_file
from specmae.masking import ids_from_noise
from specmae.model.mae import MaskedAutoencoder
from specmae.training.engine import Dist, Trainer, param_groups
from specmae.training.pretrain import reconstruction_loss

# The golden models that hold a training trajectory.
TRAJECTORIES = sorted(p.parent.name for p in GOLDEN.glob("*/train_trajectory.json"))
LOSS_ATOL = 1e-5
STATE_RTOL = 1e-5  # per tensor: |ours - official| / |official|, L2 norms


def golden_run(folder: str, **train) -> RunConfig:
    """The msm-mae recipe with the golden model and the golden run's optimisation settings."""
    args = json.loads((GOLDEN / folder / "train_trajectory.json").read_text())["args"]
    assert args["clip_grad"] is None and args["iterations_per_epoch"] % args["accum_iter"] == 0
    batch = args["batch"] * args["accum_iter"]  # specmae's batch_size is per optimizer step
    run = dict(epochs=args["epochs"], warmup_epochs=args["warmup_epochs"], batch_size=batch,
               micro_batch=args["batch"], blr=args["lr"] * 256 / batch, min_lr=args["min_lr"],
               weight_decay=args["weight_decay"], betas=args["betas"], workers=0, **train)
    return compose([read_config_file("msm-mae"), dict(model=golden_model_config(folder).to_dict(),
                                                       masking=dict(ratio=args["mask_ratio"]), train=run)])


def train_like_official(folder: str, cfg: RunConfig, run_dir) -> tuple[MaskedAutoencoder, list, list, Trainer]:
    """-> (the model after the run, every iteration's loss and lr, the trainer)."""
    load = lambda name: torch.from_numpy(np.load(GOLDEN / folder / name))
    inputs, noise = load("train_inputs.npy"), load("train_noise.npy")  # (E, I, B, 1, F, T), (E, I, B, L)
    model = MaskedAutoencoder(cfg.model)
    start = torch.load(GOLDEN / folder / "checkpoint-0.pth", weights_only=True)["model"]
    model.load_state_dict(from_official_state_dict(start, model))
    epochs, iterations = inputs.shape[:2]
    trainer = Trainer(model, param_groups(model, cfg.train), cfg.train, Dist(), iterations // 2, run_dir,
                      progress=False)
    assert trainer.accum == 2 and trainer.total_steps * trainer.accum == epochs * iterations
    assert trainer.optimizer.defaults["eps"] == 1e-8  # the golden run's AdamW eps

    # The official run replaced torch.rand in random_masking by a lookup into the stored noise.
    noise = noise.flatten(0, 1)  # (E * I, B, L), in the order of the iterations
    masks = lambda x, step, micro_step: ids_from_noise(noise[step * trainer.accum + micro_step])
    loss = reconstruction_loss(masks, cfg.masking.ratio, torch.zeros(()), torch.ones(()))
    losses, lrs = [], []

    def recorded(net, x, step, micro_step):
        value = loss(net, x, step, micro_step)
        losses.append(value.item())
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        return value

    trainer.fit(lambda epoch: inputs[epoch], recorded)
    return model, losses, lrs, trainer


def state_errors(model: MaskedAutoencoder, folder: str) -> dict[str, float]:
    """Relative L2 error of every tensor of `model` against the official weights after the run."""
    final = torch.load(GOLDEN / folder / "train_final_state.pth", weights_only=True)
    expected, ours = from_official_state_dict(final, model), model.state_dict()
    assert expected.keys() == ours.keys()
    return {k: ((ours[k] - v).norm() / v.norm()).item() for k, v in expected.items()}


@pytest.mark.parametrize("folder", TRAJECTORIES)
def test_pretraining_loop_matches_official(golden, folder, tmp_path):
    cfg = golden_run(folder)
    model, losses, lrs, trainer = train_like_official(folder, cfg, tmp_path)
    np.testing.assert_allclose(losses, np.load(golden / folder / "train_loss.npy"), rtol=0, atol=LOSS_ATOL)
    np.testing.assert_allclose(lrs, np.load(golden / folder / "train_lr.npy"), rtol=1e-9, atol=1e-12)
    errors = state_errors(model, folder)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= STATE_RTOL, f"{worst}: relative error {errors[worst]:.2e}"
    # the same parameters decayed as in the official groups
    decayed = {id(p) for g in trainer.optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {n.removeprefix("encoder."): p for n, p in model.named_parameters()}
    official = json.loads((golden / folder / "train_trajectory.json").read_text())["weight_decay_params"]
    assert sorted(n for n, p in names.items() if id(p) in decayed) == sorted(official)


@pytest.mark.parametrize("folder", TRAJECTORIES)
def test_undecayed_tokens_leave_the_official_trajectory(golden, folder, tmp_path):
    """The tolerance tells the two weight-decay rules apart: with the tokens left undecayed (the
    fine-tuning rule) exactly the two tokens end outside it."""
    model, losses, _, _ = train_like_official(folder, golden_run(folder, decay_tokens=False), tmp_path)
    errors = state_errors(model, folder)
    assert {k for k, e in errors.items() if e > STATE_RTOL} == {"encoder.cls_token", "mask_token"}
