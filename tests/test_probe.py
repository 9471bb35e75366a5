"""Probe metrics (against scikit-learn) and the grid trainer: determinism, independence, stopping."""

import numpy as np
import pytest
import torch

from specmae.config import GRIDS, ProbeConfig
from specmae.evaluation.metrics import accuracy, chance_score, mean_average_precision, roc_auc
from specmae.evaluation.probe import make_head, standardise, train_probe

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def fixed_predictions(n=200, c=6, seed=0, decimals=1):
    """Scores rounded so that many are tied, which is where metric implementations differ."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    scores = np.round(rng.random((n, c)) + 0.6 * np.eye(c)[y], decimals)
    return y, scores


def test_accuracy_equals_sklearn():
    y, s = fixed_predictions()
    assert accuracy(y, s) == sklearn_metrics.accuracy_score(y, s.argmax(1))


@pytest.mark.parametrize("decimals", [1, 3, 8])
def test_map_equals_sklearn_with_ties(decimals):
    rng = np.random.default_rng(1)
    y = (rng.random((150, 8)) < 0.2).astype(np.uint8)
    y[:, 5] = 0  # a class absent from these clips: left out of the macro average
    s = np.round(rng.random((150, 8)) + 0.5 * y, decimals)
    present = y.sum(0) > 0
    expected = sklearn_metrics.average_precision_score(y[:, present], s[:, present], average="macro")
    assert mean_average_precision(y, s) == pytest.approx(expected, abs=1e-12)
    for c in np.flatnonzero(present):
        assert mean_average_precision(y[:, [c]], s[:, [c]]) == pytest.approx(
            sklearn_metrics.average_precision_score(y[:, c], s[:, c]), abs=1e-12)


def test_map_of_single_label_task_equals_sklearn_on_one_hot():
    y, s = fixed_predictions()
    onehot = np.eye(s.shape[1])[y]
    assert mean_average_precision(y, s) == pytest.approx(
        sklearn_metrics.average_precision_score(onehot, s, average="macro"), abs=1e-12)


@pytest.mark.parametrize("decimals", [1, 2, 8])
def test_binary_roc_auc_equals_sklearn_with_ties(decimals):
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 300)
    p1 = np.round(np.clip(rng.random(300) * 0.8 + 0.2 * y, 0, 1), decimals)
    s = np.stack([1 - p1, p1], 1)
    assert roc_auc(y, s) == pytest.approx(sklearn_metrics.roc_auc_score(y, p1), abs=1e-12)


def test_multiclass_and_multilabel_roc_auc_equal_sklearn_macro():
    y, s = fixed_predictions()
    onehot = np.eye(s.shape[1])[y]
    assert roc_auc(y, s) == pytest.approx(sklearn_metrics.roc_auc_score(onehot, s, average="macro"), abs=1e-12)
    rng = np.random.default_rng(3)
    ml = (rng.random((120, 5)) < 0.3).astype(np.uint8)
    sc = np.round(rng.random((120, 5)) + 0.4 * ml, 2)
    assert roc_auc(ml, sc) == pytest.approx(sklearn_metrics.roc_auc_score(ml, sc, average="macro"), abs=1e-12)


def test_undefined_metrics_raise():
    with pytest.raises(ValueError, match="ROC-AUC is undefined"):
        roc_auc(np.zeros(5, int), np.full((5, 2), 0.5))
    with pytest.raises(ValueError, match="mAP is undefined"):
        mean_average_precision(np.zeros((5, 3), np.uint8), np.random.rand(5, 3))


def test_chance_levels():
    y = np.array([0, 0, 0, 1, 2, 2])
    assert chance_score("accuracy", y, 3) == pytest.approx(0.5)
    assert chance_score("mAP", y, 4) == pytest.approx(np.mean([3 / 6, 1 / 6, 2 / 6]))
    assert chance_score("roc_auc", y, 3) == 0.5


def test_standardise_uses_train_statistics_and_keeps_constant_features():
    train = np.array([[1.0, 5.0], [3.0, 5.0]], np.float32)
    test = np.array([[2.0, 6.0]], np.float32)
    tr, te = standardise(train, test)
    np.testing.assert_allclose(tr, [[-1, 0], [1, 0]])
    np.testing.assert_allclose(te, [[0, 1]])


def blobs(n_per_class=30, c=4, d=16, seed=0, spread=1.0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((c, d)) * 3
    y = np.repeat(np.arange(c), n_per_class)
    x = (centres[y] + spread * rng.standard_normal((len(y), d))).astype(np.float32)
    order = rng.permutation(len(y))
    return x[order], y[order]


def split3(x, y):
    n = len(y)
    a, b = int(0.6 * n), int(0.8 * n)
    return x[:a], y[:a], x[a:b], y[a:b], x[b:], y[b:]


SMALL = ProbeConfig(hidden=32, max_epochs=60, patience=5)


def test_grid_learns_separable_blobs_and_is_deterministic():
    x, y = blobs()
    state = torch.random.get_rng_state()
    a = train_probe(*split3(x, y), kind="multiclass", metric="accuracy", n_classes=4, config=SMALL)
    b = train_probe(*split3(x, y), kind="multiclass", metric="accuracy", n_classes=4, config=SMALL)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is never used
    assert a.test_score >= 0.9
    np.testing.assert_array_equal(a.test_probs, b.test_probs)
    assert [g.__dict__ for g in a.grid] == [g.__dict__ for g in b.grid]
    assert len(a.grid) == 12 and a.chosen.valid_score == max(g.valid_score for g in a.grid)
    for g in a.grid:  # stopped `patience` epochs after its best one, or at max_epochs
        assert g.epochs == min(g.best_epoch + SMALL.patience, SMALL.max_epochs)


def test_a_config_trained_alone_equals_the_same_config_in_the_grid():
    x, y = blobs(spread=4.0)  # overlapping: no early saturation
    data = split3(x, y)
    grid = train_probe(*data, kind="multiclass", metric="accuracy", n_classes=4, config=SMALL)
    alone = ProbeConfig(heads=("mlp1",), lrs=(1e-3,), hidden=32, max_epochs=60, patience=5)
    single = train_probe(*data, kind="multiclass", metric="accuracy", n_classes=4, config=alone)
    in_grid = next(g for g in grid.grid if g.head == "mlp1" and g.lr == 1e-3)
    assert single.chosen.__dict__ == in_grid.__dict__


def test_multilabel_and_binary_tasks():
    x, y = blobs(c=4)
    multi = np.stack([(y == 0) | (y == 1), (y == 1) | (y == 2), y == 3], 1).astype(np.uint8)
    r = train_probe(*split3(x, multi), kind="multilabel", metric="mAP", n_classes=3, config=GRIDS["fast"])
    assert r.test_probs.shape[1] == 3 and r.test_score > 0.9
    binary = (y >= 2).astype(np.int64)
    r = train_probe(*split3(x, binary), kind="binary", metric="roc_auc", n_classes=2,
                    config=ProbeConfig(heads=("linear",), max_epochs=30, patience=5))
    assert r.test_score > 0.9


def test_undefined_validation_metric_is_refused():
    x, y = blobs(c=2)
    x_tr, y_tr, x_va, y_va, x_te, y_te = split3(x, y)
    with pytest.raises(ValueError, match="ROC-AUC is undefined"):
        train_probe(x_tr, y_tr, x_va, np.zeros_like(y_va), x_te, y_te, kind="binary", metric="roc_auc",
                    n_classes=2, config=SMALL)


def test_mlp_head_layout_and_seeded_init():
    head = make_head("mlp2", 10, 3, hidden=8, seed=4)
    kinds = [type(m).__name__ for m in head]
    assert kinds == ["Linear", "BatchNorm1d", "SeededDropout", "ReLU"] * 2 + ["Linear"]
    again = make_head("mlp2", 10, 3, hidden=8, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(head.state_dict().values(), again.state_dict().values()))
    assert make_head("linear", 10, 3)[0].weight.shape == (3, 10)


def test_auto_precision_resolves_per_device(monkeypatch):
    import torch

    from specmae import config
    assert ProbeConfig().precision == "auto"
    assert ProbeConfig(precision="fp32").resolved("cpu").precision == "fp32"
    monkeypatch.setattr(config, "native_bf16", lambda device: False)
    assert ProbeConfig().resolved("cpu").precision == "fp32"
    monkeypatch.setattr(config, "native_bf16", lambda device: True)
    assert ProbeConfig().resolved(torch.device("cpu")).precision == "bf16"
    with pytest.raises(ValueError, match="allowed"):
        ProbeConfig(precision="fp16")


def test_native_bf16_on_cpu_needs_the_instructions_and_the_speed(monkeypatch):
    import torch

    from specmae import precision
    speedup = precision.cpu_bf16_speedup()
    assert speedup > 0 and precision.cpu_bf16_speedup() == speedup  # measured once, then cached
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: 0.55)  # Intel Xeon, AVX512-BF16, no AMX
    assert not precision.native_bf16("cpu")
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: 4.2)  # AMD EPYC, AVX512-BF16
    assert precision.native_bf16("cpu")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)  # emulated bf16
    assert not precision.native_bf16("cpu")


def test_bf16_probe_agrees_with_fp32():
    # Separable synthetic task: the bf16 grid must reach the fp32 grid's test score.
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 64)) * 2
    def part(n):
        y = rng.integers(0, 4, n)
        return (centres[y] + rng.normal(size=(n, 64))).astype(np.float32), y
    (xa, ya), (xv, yv), (xt, yt) = part(300), part(80), part(80)
    scores = {}
    for precision in ("fp32", "bf16"):
        cfg = ProbeConfig(heads=("linear", "mlp1"), lrs=(1e-3,), hidden=64, max_epochs=30, batch_size=64,
                          precision=precision)
        scores[precision] = train_probe(xa, ya, xv, yv, xt, yt, kind="multiclass", metric="accuracy",
                                        n_classes=4, config=cfg).test_score
    assert scores["fp32"] > 0.9
    assert abs(scores["bf16"] - scores["fp32"]) <= 0.03
