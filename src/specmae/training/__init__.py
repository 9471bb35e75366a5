"""Training: prepared corpora and crops, the training engine, the pre-training recipe.

    data.py      log-mel corpora on disk, deterministic random crops
    engine.py    the loop every recipe runs: set-up, optimizer steps, logging, checkpoints
    pretrain.py  masked-autoencoder pre-training
"""
