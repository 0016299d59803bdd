"""Grading tests for metrics.py: unsupervised accuracy against brute force over every
cluster-to-class map, and MIG (Chen et al. eq. 7) against its definition, its invariances
and a known answer."""

import itertools

import numpy as np

from gradelib import grades


@grades("metrics.cluster_accuracy")
def test_hungarian_is_the_best_one_to_one_map(metrics):
    rng = np.random.default_rng(2)
    for n_pred, n_lab in ((4, 4), (5, 3), (3, 5)):
        labels = rng.integers(0, n_lab, 300)
        pred = np.where(rng.random(300) < 0.6, labels % n_pred, rng.integers(0, n_pred, 300))
        cm = np.zeros((pred.max() + 1, labels.max() + 1), dtype=int)
        np.add.at(cm, (pred, labels), 1)
        small, large = sorted(cm.shape)
        mats = cm if cm.shape[0] <= cm.shape[1] else cm.T              # rows: the smaller side
        best = max(sum(mats[i, c] for i, c in enumerate(cols)) for cols in itertools.permutations(range(large), small))
        acc = metrics.cluster_accuracy(pred, labels)
        assert isinstance(acc, float), f"cluster_accuracy must return a float, got {type(acc).__name__}"
        assert abs(acc - best / 300) < 1e-12, \
            f"{n_pred} clusters, {n_lab} classes: hungarian accuracy {acc:.4f}, the best one-to-one map gives " \
            f"{best / 300:.4f}"
        majority = metrics.cluster_accuracy(pred, labels, mapping="majority")
        assert abs(majority - cm.max(axis=1).sum() / 300) < 1e-12, \
            f"majority accuracy {majority:.4f}, expected each cluster's most frequent class: " \
            f"{cm.max(axis=1).sum() / 300:.4f}"


@grades("metrics.cluster_accuracy")
def test_accuracy_is_blind_to_cluster_names(metrics):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 2000)
    pred = rng.permutation(10)[labels]
    for mapping in ("hungarian", "majority"):
        assert metrics.cluster_accuracy(pred, labels, mapping=mapping) == 1.0, \
            f"{mapping}: a renamed copy of the labels is a perfect clustering"
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 3, 3, 1, 1, 2, 2])                           # class 0 split over two clusters
    assert abs(metrics.cluster_accuracy(pred, labels) - 6 / 8) < 1e-12, "one-to-one: only half of class 0 matches"
    assert metrics.cluster_accuracy(pred, labels, mapping="majority") == 1.0


def _gap_out(metrics, mi, entropy):
    out = metrics.mutual_information_gap(mi, entropy)
    assert len(out) == 3, "mutual_information_gap must return (gaps, top, runner_up)"
    gaps, top, runner = (np.asarray(v) for v in out)
    k = mi.shape[1]
    assert gaps.shape == top.shape == runner.shape == (k,), f"each output must have shape (K,) = ({k},)"
    return gaps.astype(float), top.astype(int), runner.astype(int)


@grades("metrics.mutual_information_gap")
def test_gap_is_top_minus_runner_up_over_the_entropy(metrics):
    rng = np.random.default_rng(0)
    mi = rng.random((6, 4))                                             # (J, K), no ties
    entropy = rng.uniform(0.5, 3.0, 4)
    gaps, top, runner = _gap_out(metrics, mi, entropy)
    ordered = np.sort(mi, axis=0)[::-1]
    assert np.allclose(gaps, (ordered[0] - ordered[1]) / entropy, atol=1e-12), \
        f"gaps = {gaps.tolist()}, expected (largest - second largest MI) / H(v_k) = " \
        f"{((ordered[0] - ordered[1]) / entropy).tolist()} (eq. 7)"
    assert (top == mi.argmax(0)).all(), f"top = {top.tolist()}, expected argmax_j I(z_j; v_k) = {mi.argmax(0).tolist()}"
    assert (mi[runner, np.arange(4)] == ordered[1]).all() and (runner != top).all(), \
        "runner_up must be the latent with the second largest MI, never the top one"


@grades("metrics.mutual_information_gap")
def test_gap_invariances_and_a_single_latent(metrics):
    rng = np.random.default_rng(1)
    mi, entropy = rng.random((5, 3)), rng.uniform(0.5, 2.0, 3)
    gaps, top, _ = _gap_out(metrics, mi, entropy)
    perm = rng.permutation(5)
    gaps_p, top_p, _ = _gap_out(metrics, mi[perm], entropy)
    assert np.allclose(gaps_p, gaps, atol=1e-12) and (perm[top_p] == top).all(), \
        "renaming the latents must not change the gaps (and must rename top with them)"
    gaps_s, _, _ = _gap_out(metrics, 3.0 * mi, 3.0 * entropy)
    assert np.allclose(gaps_s, gaps, atol=1e-12), "MI and entropy in other units (bits, x 3): the gap is a ratio"
    gaps_1, top_1, runner_1 = _gap_out(metrics, mi[:1], entropy)
    assert np.allclose(gaps_1, mi[0] / entropy) and (top_1 == 0).all() and (runner_1 == -1).all(), \
        "one latent: no runner-up (-1), the gap is I / H"


@grades("metrics.mutual_information_gap")
def test_mig_is_one_when_each_factor_has_its_own_code(metrics):
    grid = np.stack(np.meshgrid(np.arange(3), np.arange(4), np.arange(5), indexing="ij"), -1).reshape(-1, 3)
    out = metrics.mig(np.zeros((len(grid), 1)), grid, discrete_codes=grid, method="histogram")
    assert abs(out["mig"] - 1.0) < 1e-12 and np.allclose(out["gaps"], 1.0), \
        f"discrete codes equal to the factors of a full grid: MIG must be 1, got {out['mig']}"
    out = metrics.mig(np.zeros((len(grid), 1)), grid, discrete_codes=grid[:, [0, 0, 2]], method="histogram")
    assert abs(out["gaps"][1]) < 1e-12 and abs(out["gaps"][0]) < 1e-12 and abs(out["gaps"][2] - 1) < 1e-12, \
        f"two codes of factor 0 and none of factor 1: gaps must be (0, 0, 1), got {out['gaps'].tolist()}"
