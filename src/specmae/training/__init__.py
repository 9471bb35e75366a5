"""Training: prepared corpora and crops, the training engine, the pre-training and fine-tuning recipes.

    prepare.py   audio files -> a prepared corpus of float16 log-mel shards (parallel, resumable, incremental)
    shards.py    writing shards and the manifest atomically; the state of a corpus, to continue it
    corpus.py    reading prepared corpora (memory-mapped shards), deterministic random crops
    sources.py   the files a corpus is prepared from: a folder or a list file
    data.py      the names other code imports from the three above
    engine.py    the loop every recipe runs: set-up, optimizer steps, logging, checkpoints
    distributed.py  torchrun processes on one node or many: process group, timeout, a lost peer
    pretrain.py  masked-autoencoder pre-training
    finetune.py  fine-tuning one fold: classifier, layer-wise lr decay, losses, validation, best checkpoint
    finetune_run.py  every fold of a task, the frozen-probe comparison, the report
    clips.py     labelled task clips: epoch order (uniform or class-balanced), crops, micro-batches
    augment.py   mixup, SpecAugment, random gain
"""
