"""Grading tests for btcvae.py (Chen et al. 2018): the minibatch estimators against eq. S4 /
S6 written out with loops, MSS's weights by their row structure and by enumerating every
batch (unbiasedness), eq. 3 and eq. 5 against closed forms. Where eq. S6 leaves a choice
(which of the other samples is "n_M"), any choice passes."""

import itertools
import math

import numpy as np
import torch

from gradelib import bernoulli_nll, check_reparameterize, decompose_kl as ref_decompose_kl, grades, isolated
from gradelib import log_qz_mws as ref_log_qz_mws


def _posteriors(b=6, d=3, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(b, d, generator=g, dtype=torch.float64) * scale
    logvar = torch.randn(b, d, generator=g, dtype=torch.float64) * 0.5 - 1.0
    z = mu + torch.exp(0.5 * logvar) * torch.randn(b, d, generator=g, dtype=torch.float64)
    return z, mu, logvar


def _pdf(x, m, lv):
    return math.exp(-0.5 * (math.log(2 * math.pi) + lv + (x - m) ** 2 / math.exp(lv)))


@grades("btcvae.reparameterize")
def test_reparameterize_is_a_gaussian_sample_with_pathwise_gradients(btcvae):
    check_reparameterize(btcvae.reparameterize, "logvar")


# --------------------------------------------------------------------------- eq. S6: the weights

CASES = [(2, 10), (5, 100), (8, 1000), (6, 6), (3, 3)]


def _weights(btcvae, b, n):
    log_w = btcvae.mss_log_weights(b, n)
    assert tuple(log_w.shape) == (b, b), f"mss_log_weights({b}, {n}) has shape {tuple(log_w.shape)}, expected (B, B)"
    return torch.as_tensor(log_w).double().exp()


@grades("btcvae.mss_log_weights")
def test_every_row_has_the_weights_of_eq_s6(btcvae):
    """Row i: 1/N for the sample's own posterior (j = i), (N - M)/(NM) for exactly one of the
    M others (eq. S6's n_M, whichever), 1/M for the remaining M - 1; so each row sums to 1."""
    for b, n in CASES:
        w = _weights(btcvae, b, n)
        m = b - 1
        strat = (n - m) / (n * m)
        for i in range(b):
            row = w[i]
            assert abs(row.sum().item() - 1) < 1e-6, f"B = {b}, N = {n}: row {i} sums to {row.sum().item()}, not 1"
            assert abs(row[i].item() - 1 / n) < 1e-6 / n, \
                f"B = {b}, N = {n}: w[{i}, {i}] = {row[i].item()}, expected 1/N = {1 / n} (the sample's own posterior)"
            others = torch.cat([row[:i], row[i + 1:]]).tolist()
            n_strat = sum(abs(v - strat) < 1e-6 * strat for v in others)
            n_rest = sum(abs(v - 1 / m) < 1e-6 / m for v in others)
            assert (n_strat, n_rest) == (1, m - 1), \
                f"B = {b}, N = {n}, row {i}: the other weights are {others}; eq. S6 wants one (N - M)/(NM) = " \
                f"{strat:.4g} and M - 1 = {m - 1} times 1/M = {1 / m:.4g}"


@grades("btcvae.mss_log_weights")
def test_mss_is_unbiased_over_every_batch(btcvae):
    """For each row i, put n* at position i and every ordered choice of M others (without
    replacement, n* excluded) in the other positions. Unbiasedness, E[sum_j w_ij q(z|n_j)] =
    q(z) = (1/N) sum_n q(z|n), holds when, for every n*, the mean over those batches is
    q(z|n*)/N + (1 - 1/N) mean_{n != n*} q(z|n): averaging that over n* gives q(z)."""
    for b, n in ((4, 6), (3, 7)):
        w = _weights(btcvae, b, n).numpy()
        q = np.random.default_rng(b).uniform(0.1, 2.0, size=n)     # q(z|n) at one fixed z, n = 0..N-1
        for i in range(b):
            for star in range(n):
                rest = [k for k in range(n) if k != star]
                ests = [float(w[i] @ q[list(o[:i]) + [star] + list(o[i:])])
                        for o in itertools.permutations(rest, b - 1)]
                target = q[star] / n + (1 - 1 / n) * q[rest].mean()
                assert abs(np.mean(ests) - target) < 1e-9, \
                    f"B = {b}, N = {n}, row {i}: over all batches holding n* = {star} at position {i}, the " \
                    f"estimate averages {np.mean(ests):.6f}, not {target:.6f}: the estimator is biased for q(z)"


# --------------------------------------------------------------------------- eq. S4 and eq. S6 estimators


def _matrix(r=3, b=5, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(r, b, d, generator=g, dtype=torch.float64) - 1.0       # (R, B, D) log q(z_id|x_j)


def _out(result, r, d, name):
    assert len(result) == 2, f"{name} must return (log q(z_i) (R,), log q(z_id) (R, D))"
    log_qz, log_qzd = result
    assert tuple(log_qz.shape) == (r,) and tuple(log_qzd.shape) == (r, d), \
        f"{name} returned shapes {tuple(log_qz.shape)} and {tuple(log_qzd.shape)}, expected {(r,)} and {(r, d)}"
    return log_qz.double(), log_qzd.double()


@grades("btcvae.log_qz_mws")
def test_mws_equals_eq_s4_written_out(btcvae):
    for r, b, d, n in ((3, 5, 4, 1000), (1, 7, 2, 50), (6, 6, 3, 6)):    # R < B: M is the batch, not the rows
        mat = _matrix(r, b, d, seed=r)
        log_qz, log_qzd = _out(btcvae.log_qz_mws(mat, n), r, d, "log_qz_mws")
        e = mat.exp().numpy()
        for i in range(r):
            joint = sum(np.prod(e[i, j]) for j in range(b)) / (n * b)   # (1/(NM)) sum_j prod_d q(z_id|x_j)
            assert abs(log_qz[i].item() - math.log(joint)) < 1e-9, \
                f"R, B, D, N = {r, b, d, n}: log q(z_{i}) = {log_qz[i].item():.6f}, eq. S4 gives {math.log(joint):.6f}"
            for k in range(d):
                marg = sum(e[i, j, k] for j in range(b)) / (n * b)
                assert abs(log_qzd[i, k].item() - math.log(marg)) < 1e-9, \
                    f"log q(z_{i}{k}) = {log_qzd[i, k].item():.6f}, eq. S4 per dimension gives {math.log(marg):.6f}"


@grades("btcvae.log_qz_mss")
def test_mss_estimator_equals_eq_s6_written_out(btcvae):
    """With any weights: log q(z_i) = log sum_j w_ij prod_d q(z_id|x_j) (w_ij once, on the joint)."""
    rng = np.random.default_rng(1)
    for r, b, d in ((3, 5, 4), (2, 2, 6)):
        mat = _matrix(r, b, d, seed=10 + r)
        w = rng.dirichlet(np.ones(b), size=r)                            # (R, B) any weights, rows sum to 1
        log_qz, log_qzd = _out(btcvae.log_qz_mss(mat, torch.from_numpy(np.log(w))), r, d, "log_qz_mss")
        e = mat.exp().numpy()
        for i in range(r):
            joint = sum(w[i, j] * np.prod(e[i, j]) for j in range(b))
            assert abs(log_qz[i].item() - math.log(joint)) < 1e-9, \
                f"log q(z_{i}) = {log_qz[i].item():.6f}, eq. S6 gives {math.log(joint):.6f}: the weight " \
                "multiplies the joint density prod_d q(z_id|x_j), so log w_ij enters once"
            for k in range(d):
                marg = sum(w[i, j] * e[i, j, k] for j in range(b))
                assert abs(log_qzd[i, k].item() - math.log(marg)) < 1e-9, \
                    f"log q(z_{i}{k}) = {log_qzd[i, k].item():.6f}, eq. S6 on the marginal gives {math.log(marg):.6f}"


@grades("btcvae.log_qz_mss")
def test_mss_with_uniform_weights_is_mws(btcvae):
    mat = _matrix(4, 6, 3, seed=3)
    mws = ref_log_qz_mws(mat, 100)
    mss = _out(btcvae.log_qz_mss(mat, torch.full((4, 6), -math.log(600.0), dtype=torch.float64)), 4, 3, "log_qz_mss")
    assert torch.allclose(mss[0], mws[0], atol=1e-9) and torch.allclose(mss[1], mws[1], atol=1e-9), \
        "with every w_ij = 1/(N B), eq. S6 must give eq. S4's values"


# --------------------------------------------------------------------------- eq. 3


def _decompose(btcvae, *args):
    with isolated(btcvae, "mss_log_weights", "log_qz_mws", "log_qz_mss"):
        return btcvae.decompose_kl(*args)


def _check_terms(t, z, mu, logvar):
    b, d = z.shape
    for key in ("mi", "tc", "dwkl", "log_qz_x", "log_qz", "log_prod_qzd", "log_pz"):
        assert key in t and tuple(t[key].shape) == (b,), f"decompose_kl must return {key} with shape (B,) = {(b,)}"
    for i in range(b):
        own = sum(math.log(_pdf(z[i, k].item(), mu[i, k].item(), logvar[i, k].item())) for k in range(d))
        prior = sum(math.log(_pdf(z[i, k].item(), 0.0, 0.0)) for k in range(d))
        assert abs(t["log_qz_x"][i].item() - own) < 1e-8, f"log_qz_x[{i}] must be log q(z_i|x_i) = {own:.6f}"
        assert abs(t["log_pz"][i].item() - prior) < 1e-8, f"log_pz[{i}] must be log N(z_i; 0, I) = {prior:.6f}"
    tq = {k: t[k].double() for k in t}
    assert torch.allclose(tq["mi"], tq["log_qz_x"] - tq["log_qz"], atol=1e-9), "eq. 3 (i): mi = log q(z|x) - log q(z)"
    assert torch.allclose(tq["tc"], tq["log_qz"] - tq["log_prod_qzd"], atol=1e-9), \
        "eq. 3 (ii): tc = log q(z) - sum_d log q(z_d)"
    assert torch.allclose(tq["dwkl"], tq["log_prod_qzd"] - tq["log_pz"], atol=1e-9), \
        "eq. 3 (iii): dwkl = sum_d log q(z_d) - log p(z)"


@grades("btcvae.decompose_kl")
def test_eq3_terms_with_mws(btcvae):
    b, d, n = 6, 3, 1000
    z, mu, logvar = _posteriors(b, d, seed=2)
    t = _decompose(btcvae, z, mu, logvar, n, "mws")
    _check_terms(t, z, mu, logvar)
    for i in range(b):
        joint = sum(math.prod(_pdf(z[i, k].item(), mu[j, k].item(), logvar[j, k].item()) for k in range(d))
                    for j in range(b)) / (n * b)
        assert abs(t["log_qz"][i].item() - math.log(joint)) < 1e-8, f"log_qz[{i}] must be eq. S4's estimate"
        marg = sum(math.log(sum(_pdf(z[i, k].item(), mu[j, k].item(), logvar[j, k].item()) for j in range(b)) / (n * b))
                   for k in range(d))
        assert abs(t["log_prod_qzd"][i].item() - marg) < 1e-8, \
            f"log_prod_qzd[{i}] must be sum_d of eq. S4's log q(z_id)"


@grades("btcvae.decompose_kl")
def test_eq3_terms_with_mss_and_any_stratum_column(btcvae):
    b, d, n = 5, 3, 50
    z, mu, logvar = _posteriors(b, d, seed=3)
    t = _decompose(btcvae, z, mu, logvar, n, "mss")
    _check_terms(t, z, mu, logvar)
    m = b - 1

    def q(i, j, dims):
        return math.prod(_pdf(z[i, k].item(), mu[j, k].item(), logvar[j, k].item()) for k in dims)

    for i in range(b):
        ok = False
        for n_m in (j for j in range(b) if j != i):
            rest = [j for j in range(b) if j not in (i, n_m)]

            def f(dims):
                return q(i, i, dims) / n + sum(q(i, j, dims) for j in rest) / m + (n - m) / (n * m) * q(i, n_m, dims)
            ok |= (abs(t["log_qz"][i].item() - math.log(f(range(d)))) < 1e-8
                   and abs(t["log_prod_qzd"][i].item() - sum(math.log(f([k])) for k in range(d))) < 1e-8)
        assert ok, f"row {i}: log_qz and log_prod_qzd match eq. S6 for no choice of n_M"


@grades("btcvae.decompose_kl")
def test_eq3_adds_up_to_the_one_sample_kl(btcvae):
    z, mu, logvar = _posteriors(16, 10, seed=4, scale=2.0)
    for estimator in ("mws", "mss"):
        t = _decompose(btcvae, z, mu, logvar, 5000, estimator)
        kl = (torch.distributions.Normal(mu, torch.exp(0.5 * logvar)).log_prob(z)
              - torch.distributions.Normal(0.0, 1.0).log_prob(z)).sum(1)
        total = (t["mi"] + t["tc"] + t["dwkl"]).double()
        assert torch.allclose(total, kl, atol=1e-8), \
            f"{estimator}: mi + tc + dwkl must equal log q(z|x) - log p(z) for every sample"


# --------------------------------------------------------------------------- eq. 5, eq. 2


def _toy(b=8, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(b, 1, 8, 8, generator=g) > 0.5).double()
    logits = torch.randn(b, 1, 8, 8, generator=g, dtype=torch.float64)
    mu = torch.randn(b, d, generator=g, dtype=torch.float64)
    logvar = torch.randn(b, d, generator=g, dtype=torch.float64) * 0.3
    z = mu + torch.exp(0.5 * logvar) * torch.randn(b, d, generator=g, dtype=torch.float64)
    return x, logits, z, mu, logvar


def _loss(btcvae, *args, **kw):
    with isolated(btcvae, "decompose_kl"):
        return btcvae.btcvae_loss(*args, **kw)


@grades("btcvae.btcvae_loss")
def test_eq5_weights_the_batch_means_of_the_eq3_terms(btcvae):
    x, logits, z, mu, logvar = _toy()
    for estimator in ("mws", "mss"):
        t = _loss(btcvae, x, logits, z, mu, logvar, 1000, alpha=0.5, beta=6.0, gamma=2.0, estimator=estimator)
        ref = ref_decompose_kl(z, mu, logvar, 1000, estimator)
        recon = bernoulli_nll(x, logits).mean().item()
        mi, tc, dwkl = (ref[k].mean().item() for k in ("mi", "tc", "dwkl"))
        assert abs(float(t["recon"]) - recon) < 1e-6 * recon, \
            f"recon = {float(t['recon']):.5f}, expected {recon:.5f}: Bernoulli NLL summed over pixels, batch mean"
        for key, value in (("mi", mi), ("tc", tc), ("dwkl", dwkl)):
            assert abs(float(t[key]) - value) < 1e-6 * max(1.0, abs(value)), \
                f"{estimator}: {key} = {float(t[key]):.5f}, expected the batch mean {value:.5f}"
        expected = recon + 0.5 * mi + 6.0 * tc + 2.0 * dwkl
        assert abs(float(t["loss"]) - expected) < 1e-6 * abs(expected), \
            f"{estimator}: loss = {float(t['loss']):.5f}, expected recon + alpha mi + beta tc + gamma dwkl = " \
            f"{expected:.5f}"
        kl = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar)
        assert torch.allclose(t["kl_units"].double(), kl.mean(0), atol=1e-8), \
            "kl_units: the closed-form KL per unit, batch mean"
        assert abs(float(t["kl"]) - kl.sum(1).mean().item()) < 1e-8, "kl: closed-form KL(q(z|x)||p(z)), batch mean"


@grades("btcvae.btcvae_loss")
def test_beta_vae_needs_no_log_qz(btcvae):
    x, logits, z, mu, logvar = _toy(seed=1)
    one_sample_kl = (torch.distributions.Normal(mu, torch.exp(0.5 * logvar)).log_prob(z)
                     - torch.distributions.Normal(0.0, 1.0).log_prob(z)).sum(1).mean().item()
    recon = bernoulli_nll(x, logits).mean().item()
    for estimator in ("mws", "mss", None):
        t = _loss(btcvae, x, logits, z, mu, logvar, 1000, alpha=4.0, beta=4.0, gamma=4.0, estimator=estimator)
        assert abs(float(t["loss"]) - (recon + 4 * one_sample_kl)) < 1e-6 * abs(recon + 4 * one_sample_kl), \
            f"estimator={estimator}: with alpha = beta = gamma = 4, eq. 5 is eq. 2, recon + 4 * KL"
    assert all(math.isnan(float(t[k])) for k in ("mi", "tc", "dwkl")), \
        "estimator=None estimates no log q(z): mi, tc and dwkl are NaN (see the docstring)"
