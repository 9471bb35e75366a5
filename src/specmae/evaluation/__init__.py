"""Evaluation: HEAR-style frozen-encoder probes on labelled tasks.

    tasks.py      CSV manifests and HEAR task folders, splits, folds
    metrics.py    accuracy, mAP, ROC-AUC
    probe.py      shallow heads (linear, MLP), the grid, early stopping
    embedders.py  what evaluation embeds with (models, baselines), audio store, cache
    evaluate.py   the runner and `specmae evaluate`
    report.py     the report writer of evaluate and finetune: JSON, Markdown, figures
"""
