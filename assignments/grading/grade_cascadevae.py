"""Grading tests for cascadevae.py (Jeong & Song 2019): the eq. 6 assignment against brute
force (any optimal labelling passes, ties included), the cascade schedule at its
boundaries, Lemma 1's pair count by counting, eq. 5 against an independent computation."""

import itertools
import math

import numpy as np
import torch

from gradelib import bernoulli_nll, check_reparameterize, grades, isolated
from gradelib import relieved_dims as ref_relieved_dims


@grades("cascadevae.reparameterize")
def test_reparameterize_is_a_gaussian_sample_with_pathwise_gradients(cascadevae):
    check_reparameterize(cascadevae.reparameterize, "sigma")


# --------------------------------------------------------------------------- Algorithm 1, sec. 6


@grades("cascadevae.relieved_dims")
def test_paper_schedule_relieves_one_dim_every_r_updates(cascadevae):
    m, r, td = 6, 100, 250
    for t, n in ((0, 0), (r - 1, 0), (r, 1), (2 * r - 1, 1), (td, 2), (m * r - 1, 5), (m * r, 6), (10 * m * r, 6)):
        got = cascadevae.relieved_dims(t, m, r, td)
        assert int(got) == n, \
            f"relieved_dims(t={t}, m={m}, r={r}) = {got}, expected floor(t / r) capped at m = {n} (Algorithm 1)"


@grades("cascadevae.relieved_dims")
def test_code_schedule_starts_at_once_and_pauses_after_t_d(cascadevae):
    m, r, td = 6, 100, 400
    for t, n in ((0, 0), (1, 1), (r, 1), (r + 1, 2), (td, 4), (td + 1, 4), (5 * r, 4), (5 * r + 1, 5),
                 (6 * r + 1, 6), (100 * r, 6)):
        got = cascadevae.relieved_dims(t, m, r, td, schedule="code")
        assert int(got) == n, f"relieved_dims(t={t}, m={m}, r={r}, t_d={td}, 'code') = {got}, expected {n}"
    assert int(cascadevae.relieved_dims(1, 10, 10000, 0, "code")) == 0, "t_d = 0: the pause starts at once"


@grades("cascadevae.cascade_betas")
def test_betas_are_beta_l_for_the_relieved_dims_in_order(cascadevae):
    m, bh, bl, r, td = 6, 10.0, 1.0, 100, 250
    with isolated(cascadevae, "relieved_dims"):
        for t, schedule in ((0, "paper"), (r, "paper"), (3 * r + 5, "paper"), (m * r, "paper"), (td + 1, "code")):
            betas = cascadevae.cascade_betas(t, m, bh, bl, r, td, schedule)
            n = ref_relieved_dims(t, m, r, td, schedule)
            assert tuple(betas.shape) == (m,) and betas.dtype == torch.float32, \
                f"betas must be a (m,) = ({m},) float32 tensor, got {tuple(betas.shape)} {betas.dtype}"
            assert betas.tolist() == [bl] * n + [bh] * (m - n), \
                f"t = {t} ({schedule}): betas = {betas.tolist()}, expected the first {n} dims at beta_l = {bl}, " \
                f"the rest at beta_h = {bh}"


# --------------------------------------------------------------------------- Lemma 1


@grades("cascadevae.same_class_pairs")
def test_pairs_are_counted_once_per_unordered_pair(cascadevae):
    rng = np.random.default_rng(0)
    for b, s in ((9, 3), (1, 2), (12, 5), (6, 6)):
        d = torch.from_numpy(rng.integers(0, s, size=b))
        counts, pairs = cascadevae.same_class_pairs(d, s)
        expected = np.bincount(d.numpy(), minlength=s)
        assert tuple(counts.shape) == (s,) and np.allclose(counts.double().numpy(), expected), \
            f"counts = {counts.tolist()}, expected n_k = {expected.tolist()} (S = {s} entries, empty classes too)"
        unordered = sum(1 for i, j in itertools.combinations(range(b), 2) if d[i] == d[j])
        ordered = sum(1 for i in range(b) for j in range(b) if i != j and d[i] == d[j])
        p = torch.as_tensor(pairs)
        assert p.numel() == 1 and abs(p.item() - unordered) < 1e-9, \
            f"pairs = {p.item()}, expected {unordered} unordered same-class pairs (the code's convention)"
        q = expected / b
        assert abs(ordered - (b * b * (q ** 2).sum() - b)) < 1e-9 and ordered == 2 * unordered


# --------------------------------------------------------------------------- eq. 6: assign


def _objective(u, d, lam):
    """sum_i u[i, d_i] - lam * (unordered same-class pairs)."""
    counts = np.bincount(np.asarray(d), minlength=u.shape[1])
    return float(u[np.arange(len(d)), d].sum()) - lam * float((counts * (counts - 1) / 2).sum())


def _brute_force_best(u, lam):
    b, s = u.shape
    labellings = np.array(list(itertools.product(range(s), repeat=b)))          # (S^B, B)
    gain = u[np.arange(b), labellings].sum(axis=1)
    counts = np.stack([(labellings == k).sum(axis=1) for k in range(s)], 1)
    return float((gain - lam * (counts * (counts - 1) / 2).sum(axis=1)).max())


def _assign(cascadevae, u, lam, **kw):
    d = cascadevae.assign(u, lam, **kw)
    b, s = np.shape(u)
    assert isinstance(d, torch.Tensor) and d.dtype == torch.int64 and tuple(d.shape) == (b,) \
        and d.device.type == "cpu", f"assign must return a LongTensor (B,) = ({b},) on the CPU, got {d!r}"
    assert int(d.min()) >= 0 and int(d.max()) < s, f"classes must be in 0..S-1 = 0..{s - 1}, got {d.tolist()}"
    return d.numpy()


@grades("cascadevae.assign")
def test_assign_is_optimal_against_brute_force(cascadevae):
    for b, s in ((1, 2), (2, 3), (4, 2), (5, 3), (6, 2)):
        rng = np.random.default_rng(100 * b + s)
        for trial in range(3):
            u = rng.normal(size=(b, s)) * 2.0 if trial < 2 else rng.integers(-2, 1, size=(b, s)).astype(float)
            for lam in (0.0, 0.05, 0.4, 2.0, 1e3):
                best = _brute_force_best(u, lam)
                for kw in ({}, {"slots": -(-b // s)}):  # the smallest feasible cap: exercises any widening
                    d = _assign(cascadevae, torch.from_numpy(u), lam, **kw)
                    got = _objective(u, d, lam)
                    assert got >= best - 1e-9, \
                        f"B = {b}, S = {s}, lam' = {lam}: assign reaches {got:.6f}, the optimum of eq. 6 is " \
                        f"{best:.6f} (u = {u.round(3).tolist()}, d = {d.tolist()})"


@grades("cascadevae.assign")
def test_assign_charges_lam_once_per_unordered_pair(cascadevae):
    u = np.array([[0.0, -1.0], [0.0, -1.0]])
    assert _assign(cascadevae, u, 0.8).tolist() == [0, 0], \
        "two images preferring class 0 by 1 nat: one pair costs lam' = 0.8 < 1, so both stay in class 0"
    assert sorted(_assign(cascadevae, u, 1.2).tolist()) == [0, 1], "lam' = 1.2 > 1: the pair is split"


@grades("cascadevae.assign")
def test_assign_limits_and_a_large_batch(cascadevae):
    torch.manual_seed(0)
    u = torch.randn(64, 10) * 50.0
    assert _assign(cascadevae, u, 0.0).tolist() == u.argmax(1).tolist(), "lam' = 0: the row-wise argmax"
    for b, s in ((64, 10), (10, 3), (7, 3)):
        u = torch.randn(b, s)
        u[:, 0] += 100.0
        counts = np.bincount(_assign(cascadevae, u, 1e6), minlength=s)
        assert counts.max() - counts.min() <= 1, f"a huge lam' must balance the classes, got counts {counts.tolist()}"
    # B = 64, S = 10, too big for brute force: moving one image never helps an optimum.
    u = (torch.randn(64, 10) * 3.0).numpy()
    u[:, 0] += 4.0
    d = _assign(cascadevae, u, 0.5)
    base = _objective(u, d, 0.5)
    for i in range(64):
        for k in range(10):
            moved = d.copy()
            moved[i] = k
            assert _objective(u, moved, 0.5) <= base + 1e-9, \
                f"moving image {i} to class {k} raises the objective: assign is not optimal"


# --------------------------------------------------------------------------- eq. 5


def _toy(b=7, d=4, s=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 1, 32, 32, generator=g).round()
    logits = torch.randn(b, 1, 32, 32, generator=g)
    mu = torch.randn(b, d, generator=g)
    sigma = torch.rand(b, d, generator=g) + 0.1
    dd = torch.randint(0, s, (b,), generator=g)
    return x, logits, mu, sigma, dd


@grades("cascadevae.cascadevae_loss")
def test_eq5_terms_against_an_independent_computation(cascadevae):
    x, logits, mu, sigma, d = _toy()
    betas = torch.tensor([1.0, 10.0, 10.0, 0.5])
    lam, s, b = 0.3, 3, 7
    with isolated(cascadevae, "same_class_pairs"):
        t = cascadevae.cascadevae_loss(x, logits, mu, sigma, betas, d, s, lam)
    recon = bernoulli_nll(x, logits).mean().item()
    kl_units = (0.5 * (mu.double() ** 2 + sigma.double() ** 2 - 1) - torch.log(sigma.double())).mean(0)
    pairs = sum(1 for i, j in itertools.combinations(range(b), 2) if d[i] == d[j])
    q = np.bincount(d.numpy(), minlength=s) / b
    h = -sum(v * math.log(v) for v in q if v > 0)
    weighted = float((betas.double() * kl_units).sum())
    checks = [
        ("recon", recon, "Bernoulli NLL summed over pixels, batch mean"),
        ("kl", kl_units.sum().item(), "sum_j of the batch-mean KL(q(z_j|x)||p(z_j))"),
        ("weighted_kl", weighted, "sum_j beta_j KL_j"),
        ("penalty", lam * pairs / b, "lam' * unordered pairs / B"),
        ("h_d", h, "entropy of the batch's q(d)"),
        ("kl_d", math.log(s) - h, "KL(q(d)||uniform) = log S - H"),
        ("lemma1_bound", s * (q ** 2).sum() - 1, "Lemma 1: S sum_k q_k^2 - 1"),
        ("loss", recon + weighted + lam * pairs / b, "recon + weighted_kl + penalty"),
    ]
    for key, expected, what in checks:
        assert key in t and abs(float(t[key]) - expected) < 1e-5 * max(1.0, abs(expected)), \
            f"{key} = {float(t[key]) if key in t else 'missing'}, expected {expected:.6f}: {what}"
    assert torch.allclose(t["kl_units"].double(), kl_units, atol=1e-5), "kl_units: (D,) batch-mean KL per unit"
    assert np.allclose(t["counts"].double().numpy(), np.bincount(d.numpy(), minlength=s)), "counts: n_k (S,)"


@grades("cascadevae.cascadevae_loss")
def test_eq5_before_t_d_has_no_discrete_terms(cascadevae):
    x, logits, mu, sigma, _ = _toy(seed=1)
    betas = torch.tensor([1.0, 10.0, 10.0, 0.5])
    with isolated(cascadevae, "same_class_pairs"):
        t = cascadevae.cascadevae_loss(x, logits, mu, sigma, betas, None, 3, 0.3)
    kl_units = (0.5 * (mu.double() ** 2 + sigma.double() ** 2 - 1) - torch.log(sigma.double())).mean(0)
    expected = bernoulli_nll(x, logits).mean().item() + float((betas.double() * kl_units).sum())
    assert abs(float(t["loss"]) - expected) < 1e-5 * expected, \
        f"d = None: loss = {float(t['loss']):.5f}, expected eq. 1 with per-dim betas {expected:.5f}"
    for key in ("penalty", "h_d", "kl_d", "lemma1_bound"):
        assert float(t[key]) == 0.0, f"d = None: {key} must be 0"
    assert tuple(t["counts"].shape) == (3,) and float(t["counts"].abs().sum()) == 0.0, "d = None: counts zeros (S,)"
