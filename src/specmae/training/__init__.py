"""Training: prepared corpora and crops, the training engine, the pre-training recipe.

    data.py      log-mel corpora on disk, deterministic random crops
    pretrain.py  masked-autoencoder pre-training
"""
