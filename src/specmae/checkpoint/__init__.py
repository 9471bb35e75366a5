"""Checkpoints: the self-describing on-disk format, and import of official weights.

    store.py     save / resolve / read specmae checkpoints (safetensors + config.json), atomically
    official.py  official MSM-MAE and M2D .pth files mapped onto specmae's model
"""

from .store import (CONFIG, FORMAT, LATEST, TRAIN_STATE, VERSION, WEIGHTS, CheckpointError, commit_latest,
                    load_checkpoint, load_model, load_train_state, read_config, resolve, save_checkpoint)

__all__ = ["CONFIG", "FORMAT", "LATEST", "TRAIN_STATE", "VERSION", "WEIGHTS", "CheckpointError", "commit_latest",
           "load_checkpoint", "load_model", "load_train_state", "read_config", "resolve", "save_checkpoint"]
