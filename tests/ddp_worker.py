"""Started by torchrun from test_pretrain.py: trains a few steps and saves this rank's weights."""

import os
import sys

import torch

from specmae.training.pretrain import pretrain

sys.path.insert(0, os.path.dirname(__file__))
from test_pretrain import tiny_run  # noqa: E402

out = sys.argv[1]
result = pretrain(tiny_run(epochs=2, batch_size=16, micro_batch=4), out, progress=False)
torch.save({k: v.cpu() for k, v in result.model.state_dict().items()}, os.path.join(out, f"rank{os.environ['RANK']}.pt"))
