"""Checkpoints: the self-describing on-disk format, one loader, and import of official weights.

    store.py     save / resolve / read specmae checkpoints (safetensors + config.json), atomically
    loader.py    every consumer's one way in: a checkpoint or official file -> typed config + model
    official.py  official MSM-MAE and M2D .pth files mapped onto specmae's model
    hub.py       hf://ORG/NAME[@REVISION] names through huggingface_hub's cache; the upload of `push`
    card.py      what `specmae push` uploads: the checkpoint, the run's figures, a model card
"""

from .loader import Checkpoint, load, read, resolve
from .store import (CONFIG, FORMAT, LATEST, TRAIN_STATE, VERSION, WEIGHTS, CheckpointError, commit_latest, identity,
                    load_checkpoint, load_train_state, read_config, save_checkpoint)

__all__ = ["CONFIG", "FORMAT", "LATEST", "TRAIN_STATE", "VERSION", "WEIGHTS", "Checkpoint", "CheckpointError",
           "commit_latest", "identity", "load", "load_checkpoint", "load_model", "load_train_state", "read", "read_config",
           "resolve", "save_checkpoint"]


def load_model(path, device="cpu"):
    """-> (MaskedAutoencoder in eval mode, config.json content as a dict); see loader.load."""
    ck = load(path, device)
    return ck.model, ck.to_json()
