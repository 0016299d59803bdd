"""Known-answer tests for metrics.py: accuracy, KL per unit, MIG (both estimators, the
sampling one against numerical integration), FactorVAE score, and bad input.

Shape legend as in metrics.py: N samples, D continuous dims, K factors, J latents
including discrete ones, M votes, L samples per vote. Everything is seeded, on CPU,
on small factor grids.
"""

import itertools
import math

import numpy as np
import pytest
import torch

import metrics


def make_grid(sizes):
    """All factor combinations of a row-major grid (last factor fastest), (N, K) int64."""
    axes = np.meshgrid(*[np.arange(s) for s in sizes], indexing="ij")  # K arrays, each sizes
    return np.stack(axes, axis=-1).reshape(-1, len(sizes))  # (N, K), explicit row-major reshape


# --------------------------------------------------------------------------- reference MI


def exact_mi(mu, sd, fac, n_grid=20001):
    """I(z; v) for z|n ~ N(mu_n, sd_n^2), v = fac_n, n uniform: numerical integration.

    mu, sd, fac (N,). q(z|v) and q(z) are explicit Gaussian mixtures evaluated on a
    grid of z fine compared with min(sd); I = sum_v p(v) int q(z|v) log(q(z|v)/q(z)) dz.
    """
    z = np.linspace((mu - 9 * sd).min(), (mu + 9 * sd).max(), n_grid)  # (G,)
    values = np.unique(fac)
    p_v = np.array([np.mean(fac == v) for v in values])  # (V,)
    q_v = np.stack([
        np.exp(-0.5 * ((z - mu[fac == v, None]) / sd[fac == v, None]) ** 2
               - np.log(sd[fac == v, None]) - 0.5 * math.log(2 * math.pi)).mean(axis=0)
        for v in values
    ])  # (V, G)
    q = p_v @ q_v  # (G,)
    with np.errstate(divide="ignore", invalid="ignore"):
        integrand = np.where(q_v > 0, q_v * np.log(q_v / q), 0.0)  # (V, G)
    trapezoid = 0.5 * (integrand[:, 1:] + integrand[:, :-1]) @ np.diff(z)  # (V,) int ... dz
    return float(p_v @ trapezoid)


def exact_mi_binned(mu, sd, fac):
    """I(z; v) when every row has the same sd: bin the means on a grid of step sd/20 and
    convolve with the Gaussian kernel (exact up to O((step/sd)^2)), for large N."""
    step = sd / 20
    lo = mu.min() - 9 * sd
    n_grid = int(np.ceil((mu.max() + 9 * sd - lo) / step)) + 1
    b = np.rint((mu - lo) / step).astype(np.int64)  # (N,) grid cell of each mean
    x = np.arange(-180, 181) * step
    kernel = np.exp(-0.5 * (x / sd) ** 2) / (sd * math.sqrt(2 * math.pi))  # (361,)

    def density(rows):
        hist = np.bincount(b[rows], minlength=n_grid) / rows.sum()  # (G,)
        return np.maximum(np.convolve(hist, kernel, "same"), 1e-300)

    q = density(np.ones_like(fac, dtype=bool))  # (G,)
    total = 0.0
    for v in np.unique(fac):
        q_v = density(fac == v)
        total += np.mean(fac == v) * np.sum(q_v * np.log(q_v / q)) * step
    return total


# --------------------------------------------------------------------------- accuracy


def test_confusion_matrix_counts():
    pred = np.array([0, 0, 1, 2, 2, 2])
    labels = torch.tensor([1, 1, 0, 0, 1, 1])
    cm = metrics.confusion_matrix(pred, labels)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, [[0, 2], [1, 0], [1, 2]])


def test_permuted_labelling_is_perfect():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 2000)
    pred = rng.permutation(10)[labels]  # same partition, other names
    assert metrics.cluster_accuracy(pred, labels) == 1.0
    assert metrics.cluster_accuracy(torch.as_tensor(pred), torch.as_tensor(labels), mapping="majority") == 1.0


def test_random_labels_are_near_chance():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, 20000)
    pred = rng.integers(0, 10, 20000)
    acc = metrics.cluster_accuracy(pred, labels)
    # the best of 10! maps sits a little above 1/K on finite data, majority a little more
    assert 0.1 <= acc < 0.115
    assert acc <= metrics.cluster_accuracy(pred, labels, mapping="majority") < 0.125


def test_hungarian_is_the_best_one_to_one_map_and_majority_is_larger():
    rng = np.random.default_rng(2)
    for n_pred, n_lab in ((4, 4), (5, 3), (3, 5)):
        labels = rng.integers(0, n_lab, 300)
        pred = np.where(rng.random(300) < 0.6, labels % n_pred, rng.integers(0, n_pred, 300))
        cm = metrics.confusion_matrix(pred, labels)  # (P, C)
        # brute force: every injective map from the smaller side into the larger one
        if n_pred <= n_lab:
            maps = itertools.permutations(range(n_lab), n_pred)  # cluster p -> class cols[p]
            best = max(sum(cm[p, c] for p, c in enumerate(cols)) for cols in maps)
        else:
            maps = itertools.permutations(range(n_pred), n_lab)  # class c -> cluster rows[c]
            best = max(sum(cm[p, c] for c, p in enumerate(rows)) for rows in maps)
        hung = metrics.cluster_accuracy(pred, labels)
        assert hung == pytest.approx(best / 300)
        assert metrics.cluster_accuracy(pred, labels, mapping="majority") >= hung


def test_more_clusters_than_classes():
    # class 0 split over clusters 0 and 3: one-to-one can match only one half
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 3, 3, 1, 1, 2, 2])
    assert metrics.cluster_accuracy(pred, labels) == pytest.approx(6 / 8)
    assert metrics.cluster_accuracy(pred, labels, mapping="majority") == 1.0


# --------------------------------------------------------------------------- KL per unit


def test_kl_per_unit_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(500, 6, generator=g), torch.randn(500, 6, generator=g)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(()), torch.ones(()))
    ref = torch.distributions.kl_divergence(q, p).mean(0).double().numpy()  # (D,)
    out = metrics.kl_per_unit(mu, logvar)
    assert out.shape == (6,)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics.kl_per_unit(np.zeros((3, 2)), np.zeros((3, 2))), 0.0)


# --------------------------------------------------------------------------- MIG: estimator


def test_sampling_estimator_is_exact_eq_s1_on_a_tiny_grid():
    # supports smaller than support_per_value: eq. S1 with the full inner sum, only
    # Monte Carlo error left; per-row sd differs, as from a real encoder
    rng = np.random.default_rng(1)
    grid = make_grid((3, 4, 6))
    grid = grid[rng.random(len(grid)) < np.where(grid[:, 0] == 0, 0.4, 0.9)]  # unequal p(v): not a full grid
    n = len(grid)
    mu = np.stack([grid[:, 0] + 0.1 * rng.standard_normal(n), grid[:, 1] + 0.5 * grid[:, 2],
                   rng.standard_normal(n)], axis=1)  # (N, 3)
    sd = np.stack([np.full(n, 0.3), rng.uniform(0.1, 0.5, n), np.full(n, 1.0)], axis=1)  # (N, 3)
    ref = np.array([[exact_mi(mu[:, j], sd[:, j], grid[:, k]) for k in range(3)] for j in range(3)])  # (D, K)
    out = metrics.mig(mu, grid, logvar=np.log(sd**2), samples_per_value=20000, entropy_samples=60000)
    assert out["mi"].shape == (3, 3)
    np.testing.assert_allclose(out["mi"], ref, atol=0.012)
    assert ref[0, 0] > 0.8 and ref[1, 1] > 0.4  # the reference is not trivially ~0


def test_sampling_estimator_with_subsampled_supports():
    # supports 5-8x larger than support_per_value / entropy_support: own row + nearest
    # rows + systematic sample; z1 resolves single grid cells (sd 0.01 < spacing 0.025)
    rng = np.random.default_rng(2)
    grid = make_grid((4, 6, 40))  # (960, 3)
    n = len(grid)
    mu = np.stack([grid[:, 0] + 0.05 * rng.standard_normal(n),
                   grid[:, 1] + grid[:, 2] / 40,
                   rng.standard_normal(n),
                   grid[:, 2] / 10 + 0.3 * grid[:, 0]], axis=1)  # (N, 4)
    sd_dims = np.array([0.03, 0.01, 0.5, 0.05])
    ref = np.array([[exact_mi_binned(mu[:, j], sd_dims[j], grid[:, k]) for k in range(3)] for j in range(4)])
    logvar = np.broadcast_to(np.log(sd_dims**2), mu.shape)
    kw = dict(samples_per_value=4000, support_per_value=32, entropy_samples=20000, entropy_support=192)
    out = metrics.mig(mu, grid, logvar=logvar, neighbours=16, **kw)
    np.testing.assert_allclose(out["mi"], ref, atol=0.01)
    # the exact window of nearest rows is what resolves z1; without it the error is large
    naive = metrics.mig(mu, grid, logvar=logvar, neighbours=0, **kw)
    assert np.abs(naive["mi"][1] - ref[1]).max() > 0.1


def test_sampling_is_seeded_and_row_order_free():
    rng = np.random.default_rng(3)
    grid = make_grid((3, 8, 8))
    mu = grid[:, [1, 2, 0]] + 0.2 * rng.standard_normal((len(grid), 3))
    logvar = np.full(mu.shape, math.log(0.1**2))
    a = metrics.mig(mu, grid, logvar=logvar, seed=5)
    b = metrics.mig(torch.as_tensor(mu), torch.as_tensor(grid), logvar=torch.as_tensor(logvar), seed=5)
    np.testing.assert_array_equal(a["mi"], b["mi"])
    perm = rng.permutation(len(grid))  # rows in any order: grouped by value, never reshaped
    c = metrics.mig(mu[perm], grid[perm], logvar=logvar[perm], seed=5)
    np.testing.assert_allclose(c["mi"], a["mi"], atol=0.02)
    h = metrics.mig(mu, grid, method="histogram")
    h_perm = metrics.mig(mu[perm], grid[perm], method="histogram")
    np.testing.assert_allclose(h_perm["mi"], h["mi"], atol=1e-12)


# --------------------------------------------------------------------------- MIG: known answers

SIZES = (3, 6, 8)


def _identity_codes(grid, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    return grid.astype(np.float64) + noise * rng.standard_normal(grid.shape)  # (N, K): code k = factor k


def test_mig_one_factor_per_code_is_near_one():
    grid = make_grid(SIZES)  # (144, 3)
    codes = _identity_codes(grid, noise=1e-3)
    out = metrics.mig(codes, grid, logvar=np.full(codes.shape, math.log(0.05**2)))
    assert out["mig"] > 0.97
    np.testing.assert_array_equal(out["top_latent"], [0, 1, 2])
    np.testing.assert_allclose(out["entropy"], np.log(SIZES))
    np.testing.assert_allclose(np.diag(out["mi_normalized"]), 1.0, atol=0.01)
    # noise-free codes for the histogram: jitter across a bin edge would split a value
    assert metrics.mig(_identity_codes(grid), grid, method="histogram")["mig"] == pytest.approx(1.0)


def test_mig_two_copies_of_every_factor_is_near_zero():
    grid = make_grid(SIZES)
    codes = np.repeat(_identity_codes(grid, noise=1e-3), 2, axis=1)  # (N, 6): codes 2k and 2k+1 copy factor k
    out = metrics.mig(codes, grid, logvar=np.full(codes.shape, math.log(0.05**2)))
    assert out["mig"] < 0.03
    assert np.all(out["mi_normalized"].max(axis=0) > 0.97)  # the information is there, twice
    assert metrics.mig(codes, grid, method="histogram")["mig"] == pytest.approx(0.0, abs=1e-12)


def test_mig_rotated_codes_are_near_zero():
    grid = make_grid((8, 8, 3))
    c, s = math.cos(math.pi / 4), math.sin(math.pi / 4)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])  # mixes factors 0 and 1
    codes = grid @ rot.T  # (N, 3)
    out = metrics.mig(codes, grid, logvar=np.full(codes.shape, math.log(0.05**2)), factor_subset=[0, 1])
    assert out["mig"] < 0.05
    # informative but not axis-aligned: I(a + b; a) / H(a) = (H(a + b) - H(b)) / H(a) = 0.23
    assert np.all(out["mi_normalized"][:2].max(axis=0) > 0.2)


def test_mig_pure_noise_is_near_zero():
    grid = make_grid((4, 10, 10))
    rng = np.random.default_rng(4)
    codes = rng.standard_normal((len(grid), 4))
    out = metrics.mig(codes, grid, logvar=np.zeros(codes.shape))
    assert out["mig"] < 0.02
    assert np.abs(out["mi_normalized"]).max() < 0.03


def test_mig_discrete_latent_is_one_more_latent_with_exact_mi():
    grid = make_grid(SIZES)
    rng = np.random.default_rng(5)
    codes = np.stack([grid[:, 1], grid[:, 2]], axis=1) + 1e-3 * rng.standard_normal((len(grid), 2))
    shuffled = rng.permutation(3)[grid[:, 0]]  # a discrete code that names shape differently
    noise_code = rng.integers(0, 3, len(grid))
    out = metrics.mig(codes, grid, logvar=np.full(codes.shape, math.log(0.05**2)),
                      discrete_codes=np.stack([shuffled, noise_code], axis=1))
    assert out["mi"].shape == (4, 3) and out["latents"] == ["z0", "z1", "c0", "c1"]
    assert out["top_latent"][0] == 2
    assert out["mi"][2, 0] == pytest.approx(math.log(3), abs=1e-12)  # exact, no sampling error
    # c1 vs each factor: the plug-in MI of the contingency table, computed by hand
    for k in range(3):
        joint = np.zeros((3, SIZES[k]))
        np.add.at(joint, (noise_code, grid[:, k]), 1.0)
        p = joint / joint.sum()
        outer = p.sum(1, keepdims=True) * p.sum(0, keepdims=True)
        ref = np.sum(p[p > 0] * np.log(p[p > 0] / outer[p > 0]))
        assert out["mi"][3, k] == pytest.approx(ref, abs=1e-12)
    assert out["mig"] > 0.9
    hist = metrics.mig(np.round(codes), grid, discrete_codes=shuffled, method="histogram")
    assert hist["mi"][2, 0] == pytest.approx(math.log(3)) and hist["mig"] == pytest.approx(1.0)


def test_factor_subset_scores_only_the_chosen_factors():
    # Chen et al. Table 2: dSprites scored on scale, rotation, posX, posY (shape as noise)
    grid = make_grid((3, 4, 5, 6, 6))
    codes = grid[:, 1:].astype(np.float64)  # no code for shape
    out = metrics.mig(codes, grid, method="histogram", factor_subset=[1, 2, 3, 4])
    assert out["factors"] == [1, 2, 3, 4] and out["mi"].shape == (4, 4)
    np.testing.assert_allclose(out["entropy"], np.log([4, 5, 6, 6]))
    assert out["mig"] == pytest.approx(1.0)
    assert metrics.mig(codes, grid, method="histogram")["gaps"][0] == pytest.approx(0.0)


def test_histogram_mi_is_the_plug_in_mi_of_20_bins():
    grid = make_grid((40, 3))  # a 40-value factor, like dSprites rotation
    codes = grid[:, :1].astype(np.float64)  # (N, 1) the factor itself
    out = metrics.mig(codes, grid, method="histogram", factor_subset=[0])
    # 20 equal-width bins over [0, 39] put exactly two values in each bin: I = log 20 < log 40
    assert out["mi"][0, 0] == pytest.approx(math.log(20))
    assert out["mig"] == pytest.approx(math.log(20) / math.log(40))
    # while the sampling estimator with a small posterior sd sees all 40 values
    samp = metrics.mig(codes, grid, logvar=np.full(codes.shape, math.log(0.05**2)), factor_subset=[0])
    assert samp["mi_normalized"][0, 0] == pytest.approx(1.0, abs=0.01)


# --------------------------------------------------------------------------- FactorVAE score


def test_jeong_song_variances_match_their_pairwise_sums():
    rng = np.random.default_rng(6)
    x = rng.standard_normal(37)
    labels = rng.integers(0, 4, 37)
    n = len(x)
    pair_cont = sum((x[p] - x[q]) ** 2 for p in range(n) for q in range(n)) / (2 * n * (n - 1))
    pair_disc = sum(labels[p] != labels[q] for p in range(n) for q in range(n)) / (2 * n * (n - 1))
    assert metrics._variance_continuous(x, axis=0) == pytest.approx(pair_cont)
    assert metrics._variance_discrete(labels, 4) == pytest.approx(pair_disc)
    many = rng.integers(0, 4, (5, 7, 37))  # (..., N): one value per leading index
    got = metrics._variance_discrete(many, 4)
    assert got.shape == (5, 7)
    assert got[3, 2] == pytest.approx(metrics._variance_discrete(many[3, 2], 4))


def test_majority_vote_accuracy_formula():
    votes = np.array([[5, 1, 0], [0, 0, 3], [2, 2, 1]])  # (J, K)
    assert metrics._majority_vote_accuracy(votes) == pytest.approx((5 + 3 + 2) / 14)


GRID4 = (3, 4, 5, 6)


def test_factor_vae_score_is_one_for_identity_codes():
    grid = make_grid(GRID4)  # (360, 4)
    out = metrics.factor_vae_score(grid.astype(np.float64), grid, n_votes=200, subset_size=10)
    assert out["score"] == 1.0
    assert out["vote_matrix"].shape == (4, 4)
    np.testing.assert_array_equal(out["vote_matrix"], np.diag([50, 50, 50, 50]))  # balanced: M/K each


def test_factor_vae_score_of_noise_is_near_chance():
    grid = make_grid(GRID4)
    codes = np.random.default_rng(7).standard_normal((len(grid), 2))
    out = metrics.factor_vae_score(codes, grid, n_votes=800, subset_size=10)
    assert abs(out["score"] - 0.25) < 0.06
    out = metrics.factor_vae_score(codes, grid, n_votes=400, subset_size=10, n_eval_votes=400)
    assert abs(out["score"] - 0.25) < 0.06 and out["score"] <= out["train_score"]


def test_factor_vae_score_picks_the_discrete_dim_for_shape():
    grid = make_grid(GRID4)
    rng = np.random.default_rng(8)
    codes = np.concatenate([grid[:, 1:] + 0.01 * rng.standard_normal((len(grid), 3)),
                            rng.standard_normal((len(grid), 1))], axis=1)  # (N, 4): no continuous shape code
    shape_code = rng.permutation(3)[grid[:, 0]]  # a discrete code for shape, named differently
    out = metrics.factor_vae_score(codes, grid, discrete_codes=shape_code, n_votes=400, subset_size=20)
    assert out["latents"] == ["z0", "z1", "z2", "z3", "c0"]
    vm = out["vote_matrix"]  # (J, K), discrete dim last
    assert vm[-1, 0] == 100 and vm[:, 0].sum() == 100  # every shape vote goes to the discrete dim
    assert out["score"] == 1.0


def test_factor_vae_score_prunes_collapsed_dims():
    grid = make_grid(GRID4)
    rng = np.random.default_rng(9)
    codes = np.concatenate([grid.astype(np.float64), rng.standard_normal((len(grid), 1)) * 1e-3], axis=1)
    kl = np.array([2.0, 2.0, 2.0, 2.0, 0.05])  # supp. C: the last dim (KL < 0.1) is pruned
    out = metrics.factor_vae_score(codes, grid, kl_per_dim=kl, n_votes=200, subset_size=10)
    np.testing.assert_array_equal(out["kept_dims"], [0, 1, 2, 3])
    assert out["vote_matrix"].shape == (4, 4) and out["score"] == 1.0
    dead = metrics.factor_vae_score(codes, grid, kl_per_dim=np.zeros(5), n_votes=200, subset_size=10)
    assert dead["score"] == pytest.approx(0.25) and dead["vote_matrix"].shape == (0, 4)


def test_grid_votes_index_a_row_major_grid_with_one_factor_fixed():
    sizes = (3, 6, 40, 32, 32)
    factor, idx = metrics.grid_votes(sizes, n_votes=50, subset_size=100, seed=0, factor_subset=[1, 2, 3, 4])
    assert factor.dtype == torch.int64 and idx.dtype == torch.int64
    assert factor.shape == (50,) and idx.shape == (50, 100)
    values = np.stack(np.unravel_index(idx.numpy(), sizes), axis=-1)  # (M, L, K), C order = row-major
    for m in range(50):
        k = int(factor[m])
        assert k in (1, 2, 3, 4)
        assert np.all(values[m, :, k] == values[m, 0, k])  # the fixed factor
        assert len(np.unique(values[m, :, 0])) > 1  # shape varies
    np.testing.assert_array_equal(np.bincount(factor.numpy(), minlength=5), [0, 13, 13, 12, 12])


def test_factor_vae_score_from_precomputed_grid_votes():
    sizes = GRID4
    grid = make_grid(sizes)  # full grid, row-major like grid_votes
    rng = np.random.default_rng(10)
    codes = np.concatenate([grid[:, 1:] + 0.01 * rng.standard_normal((len(grid), 3))], axis=1)
    shape_code = grid[:, 0]
    factor, idx = metrics.grid_votes(sizes, n_votes=300, subset_size=25, seed=1)
    flat = idx.reshape(-1)  # (M*L,)
    votes = {"factor": factor, "codes": codes[flat].reshape(300, 25, 3),
             "discrete_codes": shape_code[flat].reshape(300, 25)}
    out = metrics.factor_vae_score(codes, None, discrete_codes=shape_code, votes=votes)
    assert out["score"] == 1.0 and out["n_votes"] == 300
    assert out["vote_matrix"][-1, 0] == out["vote_matrix"][:, 0].sum() == 75
    split = metrics.factor_vae_score(codes, grid, discrete_codes=shape_code, votes=votes, n_eval_votes=100)
    assert split["score"] == 1.0 and split["n_votes"] == 200 and split["eval_vote_matrix"].sum() == 100


# --------------------------------------------------------------------------- bad input


def test_bad_input_raises_one_clear_value_error():
    grid = make_grid(GRID4)
    codes = grid.astype(np.float64)
    logvar = np.zeros(codes.shape)
    with pytest.raises(ValueError, match="rows but the factors have"):
        metrics.mig(codes[:-1], grid, logvar=logvar)
    with pytest.raises(ValueError, match="rows but the codes have"):
        metrics.factor_vae_score(codes, grid[:-1])
    with pytest.raises(ValueError, match="one prediction per label"):
        metrics.cluster_accuracy(np.zeros(5, dtype=int), np.zeros(4, dtype=int))
    nan_codes = codes.copy()
    nan_codes[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        metrics.mig(nan_codes, grid, logvar=logvar)
    with pytest.raises(ValueError, match="NaN"):
        metrics.factor_vae_score(torch.as_tensor(nan_codes), grid)
    const = grid.copy()
    const[:, 2] = 1
    with pytest.raises(ValueError, match="factor 2 takes a single value"):
        metrics.mig(codes, const, method="histogram")
    with pytest.raises(ValueError, match="factor 2 takes a single value"):
        metrics.factor_vae_score(codes, const, subset_size=10)
    with pytest.raises(ValueError, match="fewer than subset_size=100"):
        metrics.factor_vae_score(codes, grid)  # 360 rows / 6 posY values = 60 per value
    with pytest.raises(ValueError, match="needs the posterior log-variances"):
        metrics.mig(codes, grid)
    with pytest.raises(ValueError, match="mapping must be"):
        metrics.cluster_accuracy([0, 1], [1, 0], mapping="best")
    with pytest.raises(ValueError, match="method must be"):
        metrics.mig(codes, grid, method="kde")
    with pytest.raises(ValueError, match="single value"):
        metrics.grid_votes((3, 1, 4), 10, 5, 0)


def test_factor_vae_score_rejects_nan_kl_per_dim():
    rng = np.random.default_rng(0)
    factors = np.stack([rng.integers(0, 3, 200), rng.integers(0, 4, 200)], axis=1)  # (N, 2)
    codes = rng.normal(size=(200, 3))
    with pytest.raises(ValueError, match="kl_per_dim has NaN"):
        metrics.factor_vae_score(codes, factors, kl_per_dim=[0.5, float("nan"), 0.3], n_votes=10)


def test_cluster_accuracy_with_huge_label_values_stays_small():
    import tracemalloc
    pred = np.array([7, 7, 10**9, 10**9, 5])
    labels = np.array([3 * 10**8, 3 * 10**8, 2, 2, 2])
    tracemalloc.start()
    acc = metrics.cluster_accuracy(pred, labels)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert acc == pytest.approx(4 / 5) and peak < 10**7         # a (1e9)^2 matrix would not fit
    assert metrics.cluster_accuracy(pred, labels, mapping="majority") == pytest.approx(1.0)
    assert metrics.confusion_matrix(pred, labels).shape == (3, 2)


def test_a_collapsed_discrete_code_is_dropped_unless_the_authors_rule_is_asked_for():
    # The CascadeVAE authors divide by var + 1e-10, so a constant d (0 / 1e-10 = 0) wins
    # every vote: 1/K. Ours leaves it out like a constant continuous dim.
    rng = np.random.default_rng(0)
    sizes, n = (3, 6, 40, 32, 32), 20000
    f = np.stack([rng.integers(0, k, n) for k in sizes], 1)                           # (N, 5)
    codes = np.concatenate([f[:, 1:] / np.array(sizes[1:]) + 0.02 * rng.normal(size=(n, 4)),
                            rng.normal(size=(n, 2))], 1)                              # (N, 6)
    d = np.zeros(n, dtype=np.int64)                                                   # collapsed
    ours = metrics.factor_vae_score(codes, f, discrete_codes=d, n_votes=800, seed=0)["score"]
    without = metrics.factor_vae_score(codes, f, n_votes=800, seed=0)["score"]
    authors = metrics.factor_vae_score(codes, f, discrete_codes=d, n_votes=800, seed=0,
                                       constant_discrete="authors")["score"]
    assert ours == without and ours > 0.85
    assert authors == pytest.approx(1 / 5)
