"""btcvae.py: every estimator against the paper's equations written out with loops or
closed forms, the full-data decomposition against brute force, a smoke run, exact
resume, and the bad-input sentences."""

import csv
import hashlib
import json
import math
import os

import numpy as np
import pytest
import torch
from torch.distributions import Normal

import btcvae as bt


def _posteriors(b=6, d=3, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(b, d, generator=g, dtype=torch.float64) * scale      # (B, D)
    logvar = torch.randn(b, d, generator=g, dtype=torch.float64) * 0.5 - 1.0  # (B, D)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(b, d, generator=g, dtype=torch.float64)  # (B, D)
    return z, mu, logvar


def _normal_pdf(x, m, lv):
    return math.exp(-0.5 * (math.log(2 * math.pi) + lv + (x - m) ** 2 / math.exp(lv)))


# --------------------------------------------------------------------------- densities


def test_log_density_gaussian_matches_torch_distributions():
    z, mu, logvar = _posteriors(7, 4)
    ref = Normal(mu, torch.exp(0.5 * logvar)).log_prob(z)
    assert torch.allclose(bt.log_density_gaussian(z, mu, logvar), ref, atol=1e-12)
    assert bt.log_density_gaussian(torch.zeros(1), torch.zeros(1), torch.zeros(1)).item() == \
        pytest.approx(-0.5 * math.log(2 * math.pi))


def test_log_qz_matrix_matches_direct_loop():
    z, mu, logvar = _posteriors(5, 3, seed=1)
    mat = bt.log_qz_matrix(z, mu, logvar)
    assert mat.shape == (5, 5, 3)
    for i in range(5):
        for j in range(5):
            for d in range(3):
                expected = math.log(_normal_pdf(z[i, d].item(), mu[j, d].item(), logvar[j, d].item()))
                assert mat[i, j, d].item() == pytest.approx(expected, abs=1e-10)


# --------------------------------------------------------------------------- supp. B.1 MWS, eq. S4


def test_mws_equals_eq_s4_written_out():
    b, d, n = 6, 3, 1000
    z, mu, logvar = _posteriors(b, d, seed=2)
    t = bt.decompose_kl(z, mu, logvar, n, estimator="mws")
    for i in range(b):
        # eq. S4: log (1/(N M)) sum_j q(z_i|n_j), M = B, q(z|n) = prod_d q(z_d|n)
        joint = sum(math.prod(_normal_pdf(z[i, k].item(), mu[j, k].item(), logvar[j, k].item()) for k in range(d))
                    for j in range(b))
        assert t["log_qz"][i].item() == pytest.approx(math.log(joint / (n * b)), abs=1e-9)
        # footnote 2: the same estimator for each marginal q(z_d)
        marg = sum(math.log(sum(_normal_pdf(z[i, k].item(), mu[j, k].item(), logvar[j, k].item())
                                for j in range(b)) / (n * b)) for k in range(d))
        assert t["log_prod_qzd"][i].item() == pytest.approx(marg, abs=1e-9)
        own = sum(math.log(_normal_pdf(z[i, k].item(), mu[i, k].item(), logvar[i, k].item())) for k in range(d))
        assert t["log_qz_x"][i].item() == pytest.approx(own, abs=1e-9)
        assert t["log_pz"][i].item() == pytest.approx(sum(math.log(_normal_pdf(z[i, k].item(), 0, 0))
                                                          for k in range(d)), abs=1e-9)


# --------------------------------------------------------------------------- supp. B.2 MSS, eq. S6


def _check_s6_rows(w, n):
    """Each row: 1/N on the diagonal, exactly one (N-M)/(NM), M-1 entries 1/M, sum 1."""
    b = w.shape[0]
    m = b - 1
    for i in range(b):
        row = w[i]
        assert row.sum().item() == pytest.approx(1.0, abs=1e-12), f"row {i} sums to {row.sum().item()}"
        assert row[i].item() == pytest.approx(1.0 / n)
        others = torch.cat([row[:i], row[i + 1:]])
        assert int(torch.isclose(others, torch.tensor((n - m) / (n * m), dtype=others.dtype)).sum()) == 1
        assert int(torch.isclose(others, torch.tensor(1.0 / m, dtype=others.dtype)).sum()) == m - 1


@pytest.mark.parametrize("b,n", [(2, 10), (5, 100), (8, 1000), (6, 6)])
def test_mss_log_weights_rows_sum_to_one_with_eq_s6_structure(b, n):
    log_w = bt.mss_log_weights(b, n)
    assert log_w.shape == (b, b)
    w = log_w.exp()
    _check_s6_rows(w, n)


def test_the_authors_weight_layout_fails_the_row_check():
    """The layout the docstring warns about: diagonal written with stride B (fills column 0),
    stratum weight with stride B from 1 (column 1), and the patch at row M-1, column 0."""
    b, n = 6, 100
    m = b - 1
    w = torch.full((b, b), 1.0 / m, dtype=torch.float64)
    w.view(-1)[::m + 1] = 1.0 / n
    w.view(-1)[1::m + 1] = (n - m) / (n * m)
    w[m - 1, 0] = (n - m) / (n * m)
    with pytest.raises(AssertionError):
        _check_s6_rows(w, n)                       # the check has the power to fail


def test_mss_equals_eq_s6_written_out():
    """eq. S6 lets any one of the M other samples be "n_M" (the one only the stratum without
    n* uses), so each row must equal eq. S6 written out for SOME choice of n_M, the same
    choice in the joint and in the marginals; which column it is, is not part of the equation."""
    b, d, n = 5, 3, 50
    z, mu, logvar = _posteriors(b, d, seed=3)
    t = bt.decompose_kl(z, mu, logvar, n, estimator="mss")
    m = b - 1

    def q(i, j, dims):                                    # prod_{k in dims} q(z_ik | n_j)
        return math.prod(_normal_pdf(z[i, k].item(), mu[j, k].item(), logvar[j, k].item()) for k in dims)

    for i in range(b):
        matches = []
        for n_m in (j for j in range(b) if j != i):
            rest = [j for j in range(b) if j not in (i, n_m)]  # n_1 .. n_{M-1}

            def f(dims):                                  # eq. S6
                return (q(i, i, dims) / n + sum(q(i, j, dims) for j in rest) / m
                        + (n - m) / (n * m) * q(i, n_m, dims))
            joint = math.log(f(range(d)))
            marg = sum(math.log(f([k])) for k in range(d))
            if (t["log_qz"][i].item() == pytest.approx(joint, abs=1e-9)
                    and t["log_prod_qzd"][i].item() == pytest.approx(marg, abs=1e-9)):
                matches.append(n_m)
        assert len(matches) == 1, f"row {i}: eq. S6 holds for n_M in {matches}, expected exactly one choice"


@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_mi_tc_dwkl_add_to_the_one_sample_kl(estimator):
    z, mu, logvar = _posteriors(16, 10, seed=4, scale=2.0)
    t = bt.decompose_kl(z.float(), mu.float(), logvar.float(), 5000, estimator=estimator)
    total = t["mi"] + t["tc"] + t["dwkl"]
    assert total.shape == (16,)
    assert torch.allclose(total, t["log_qz_x"] - t["log_pz"], atol=1e-4)
    assert torch.equal(t["tc"], t["log_qz"] - t["log_prod_qzd"])


@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_row_blocks_give_the_same_values_and_gradients(estimator, monkeypatch):
    z, mu, logvar = _posteriors(7, 3, seed=9)
    leaves = [t.clone().requires_grad_() for t in (z, mu, logvar)]

    def run():
        for t in leaves:
            t.grad = None
        out = bt.decompose_kl(*leaves, 100, estimator)
        (out["mi"].sum() + 6 * out["tc"].sum() + out["dwkl"].sum()).backward()
        return [out[k].detach() for k in ("log_qz", "log_prod_qzd")] + [t.grad.clone() for t in leaves]

    whole = run()
    monkeypatch.setattr(bt, "_CPU_BLOCK_ELEMENTS", 2 * 7 * 3)   # blocks of 2 rows: 4 blocks
    blocks = run()
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(whole, blocks))


def test_weight_enters_the_joint_once():
    """Adding log w once per dimension inside the joint (the pitfall) moves log q(z), hence
    TC, by (D-1) log w: -(D-1) log(B-1) when the other samples' 1/M terms dominate (broad,
    overlapping posteriors, as early in training); ours is eq. S6 (checked above)."""
    b, d, n = 64, 10, 10 ** 6
    z, mu, logvar = _posteriors(b, d, seed=5, scale=0.05)
    logvar = torch.zeros_like(logvar)
    t = bt.decompose_kl(z, mu, logvar, n, estimator="mss")
    mat = bt.log_qz_matrix(z, mu, logvar)
    log_w = bt.mss_log_weights(b, n)
    wrong = torch.logsumexp((log_w.unsqueeze(2) + mat).sum(2), dim=1)     # log w added D times
    shift = (wrong - t["log_qz"]).mean().item()
    assert shift == pytest.approx(-(d - 1) * math.log(b - 1), rel=0.05)


# --------------------------------------------------------------------------- supp. B.2.2: bias


def test_mss_unbiased_for_q_and_mws_below_it():
    """Toy data set of N Gaussian posteriors: the exact mixture q(z*) is computable. Over
    random batches MSS's estimate of q(z*) (not log) averages to it (eq. S6 unbiased); MWS's
    log-estimate (and its q) stays below (eq. S3 lower bound), MSS's log too (eq. S9)."""
    g = torch.Generator().manual_seed(6)
    n, d, b, trials = 40, 2, 8, 3000
    mu = torch.randn(n, d, generator=g, dtype=torch.float64) * 1.5     # (N, D)
    logvar = torch.full((n, d), math.log(0.8), dtype=torch.float64)   # (N, D)
    star = 0
    z_star = mu[star] + 0.9 * torch.randn(d, generator=g, dtype=torch.float64)  # (D,) ~ q(z|n*)
    exact = torch.exp(bt.log_density_gaussian(z_star, mu, logvar).sum(1)).mean().item()  # q(z*)
    z = torch.zeros(b, d, dtype=torch.float64)
    z[0] = z_star                                     # only row 0 is scored
    mss, mws = [], []
    for _ in range(trials):
        others = torch.randperm(n - 1, generator=g)[:b - 1] + 1       # eq. S6: M others, no n*
        batch = torch.cat([torch.tensor([star]), others])             # (B,)
        mss.append(bt.decompose_kl(z, mu[batch], logvar[batch], n, "mss")["log_qz"][0].item())
        iid = torch.cat([torch.tensor([star]), torch.randint(n, (b - 1,), generator=g)])  # eq. S3: i.i.d.
        mws.append(bt.decompose_kl(z, mu[iid], logvar[iid], n, "mws")["log_qz"][0].item())
    mss, mws = np.exp(np.array(mss)), np.exp(np.array(mws))
    se = mss.std() / math.sqrt(trials)
    assert se < 0.05 * exact                          # the check is sharp enough to fail
    assert abs(mss.mean() - exact) < 4 * se           # unbiased for q(z)
    assert np.log(mss).mean() <= math.log(exact)      # eq. S9: a lower bound in log
    assert np.log(mws).mean() < math.log(exact) - 1.0  # MWS: well below in log ...
    assert mws.mean() < exact - 10 * mws.std() / math.sqrt(trials)  # ... and biased for q(z)


# --------------------------------------------------------------------------- full-data decomposition


def _brute_force(z, mu, logvar):
    lq = bt.log_density_gaussian(z.double()[:, None], mu.double()[None], logvar.double()[None])  # (Q, N, D)
    n = mu.shape[0]
    return torch.logsumexp(lq.sum(2), 1) - math.log(n), torch.logsumexp(lq, 1) - math.log(n)


def test_log_aggregate_posterior_matches_brute_force_with_ragged_chunks():
    g = torch.Generator().manual_seed(7)
    n, d, q = 1001, 4, 37
    mu = torch.randn(n, d, generator=g) * 2
    logvar = torch.randn(n, d, generator=g) - 3
    z = torch.randn(q, d, generator=g) * 2
    ref_qz, ref_qzd = _brute_force(z, mu, logvar)
    readable = bt.log_aggregate_posterior(z.double(), mu.double(), logvar.double(), query_chunk=16, chunk=100)
    fast = bt.log_aggregate_posterior_fast(z, mu, logvar, query_chunk=16, component_chunk=100)
    for (log_qz, log_qzd), atol in ((readable, 1e-9), (fast, 1e-4)):
        assert log_qz.shape == (q,) and log_qzd.shape == (q, d)
        assert torch.allclose(log_qz, ref_qz, atol=atol) and torch.allclose(log_qzd, ref_qzd, atol=atol)


def test_the_fast_kernel_agrees_with_the_readable_logsumexp():
    g = torch.Generator().manual_seed(3)
    n, d, q = 5000, 10, 40
    mu = torch.randn(n, d, generator=g)
    logvar = torch.rand(n, d, generator=g) * 4 - 5                  # sd 0.08 .. 0.6
    z = mu[:q] + torch.exp(0.5 * logvar[:q]) * torch.randn(q, d, generator=g)
    readable = bt.log_aggregate_posterior(z, mu, logvar)
    fast = bt.log_aggregate_posterior_fast(z, mu, logvar)
    assert readable[0].dtype == fast[0].dtype == torch.float64
    assert (readable[0] - fast[0]).abs().max() < 1e-4 and (readable[1] - fast[1]).abs().max() < 1e-4
    assert (readable[0] - fast[0]).abs().max() > 0                  # two computations, not one


def test_log_aggregate_posterior_far_below_the_bound_falls_back_exactly():
    # One posterior e^-70 times narrower than the other: the broad one's density at its own
    # sample is ~e^-70 below the shared upper bound, so those rows take the float64 path.
    mu = torch.tensor([[0.0], [5.0]])
    logvar = torch.tensor([[-140.0], [0.0]])
    z = torch.tensor([[5.3], [0.0], [4.0]])
    log_qz, log_qzd = bt.log_aggregate_posterior_fast(z, mu, logvar)
    ref_qz, ref_qzd = _brute_force(z, mu, logvar)
    assert torch.isfinite(log_qz).all()
    assert torch.allclose(log_qz, ref_qz, atol=1e-6) and torch.allclose(log_qzd, ref_qzd, atol=1e-6)


def test_full_data_decomposition_bounds_and_closed_form_kl():
    g = torch.Generator().manual_seed(8)
    n, d = 1500, 3
    mu = torch.randn(n, d, generator=g)
    mu[:, 1] = 0.8 * mu[:, 0] + 0.6 * mu[:, 1]        # correlated codes: TC > 0
    logvar = torch.randn(n, d, generator=g) * 0.3 - 1.5
    r = bt.elbo_decomposition(mu, logvar, n_samples=10 ** 6, seed=0)
    assert r["n_samples"] == n and r["n_data"] == n     # at most one sample per posterior
    assert r["mi"] <= math.log(n)
    assert r["mi"] + r["tc"] + r["dwkl"] == pytest.approx(r["kl_mc"], abs=1e-9)
    assert abs(r["kl_mc"] - r["kl_analytic"]) < 4 * r["kl_mc_se"]
    assert r["kl_mc_se"] < 0.05 * r["kl_analytic"]       # precise enough for the check to bite
    assert r["tc"] > 10 * r["tc_se"] and r["dwkl"] > 0
    assert sum(r["dwkl_per_unit"]) == pytest.approx(r["dwkl"], abs=1e-9)
    s = r["samples"]
    assert torch.all(s["mi"] <= math.log(n) + 1e-4)      # per sample: q(z) >= q(z|n_s) / N


def test_full_data_decomposition_limits_mi_near_log_n_and_tc_zero_on_a_product():
    # Sharp, well-separated posteriors: z identifies n, so MI -> log N.
    n = 400
    mu = torch.arange(n, dtype=torch.float32).reshape(n, 1).repeat(1, 2) * torch.tensor([1.0, -1.0])
    r = bt.elbo_decomposition(mu, torch.full((n, 2), -8.0), n_samples=n)
    assert math.log(n) - 1e-3 < r["mi"] <= math.log(n) + 1e-6
    # Means on a full grid with one variance per dim: q(z) = q(z_1) q(z_2) exactly, so
    # tc_s = 0 for every sample, not only on average.
    a = torch.linspace(-2, 2, 20)
    grid = torch.stack(torch.meshgrid(a, a, indexing="ij"), dim=-1).reshape(-1, 2)  # (400, 2)
    lv = torch.tensor([-1.0, -2.0]).expand(400, 2)
    r = bt.elbo_decomposition(grid, lv, n_samples=400)
    assert r["samples"]["tc"].abs().max().item() < 1e-4


# --------------------------------------------------------------------------- eq. 5 loss, eq. 2 baseline


def _toy_batch(b=8, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(b, 1, 8, 8, generator=g) > 0.5).float()
    logits = torch.randn(b, 1, 8, 8, generator=g)
    mu = torch.randn(b, d, generator=g)
    logvar = torch.randn(b, d, generator=g) * 0.3
    z = mu + torch.exp(0.5 * logvar) * torch.randn(b, d, generator=g)
    return x, logits, z, mu, logvar


@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_btcvae_loss_is_eq5(estimator):
    x, logits, z, mu, logvar = _toy_batch()
    t = bt.btcvae_loss(x, logits, z, mu, logvar, 1000, alpha=0.5, beta=6.0, gamma=2.0, estimator=estimator)
    p = torch.sigmoid(logits)
    recon = -(x * p.log() + (1 - x) * (1 - p).log()).reshape(8, -1).sum(1).mean()  # sum pixels, mean batch
    dec = bt.decompose_kl(z, mu, logvar, 1000, estimator)
    assert t["recon"].item() == pytest.approx(recon.item(), rel=1e-5)
    expected = recon + 0.5 * dec["mi"].mean() + 6.0 * dec["tc"].mean() + 2.0 * dec["dwkl"].mean()
    assert t["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    kl = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar)
    assert torch.allclose(t["kl_units"], kl.mean(0), atol=1e-6) and t["kl_units"].shape == (4,)
    assert t["kl"].item() == pytest.approx(kl.sum(1).mean().item(), rel=1e-5)


@pytest.mark.parametrize("estimator", ["mws", "mss", None])
def test_beta_vae_is_eq5_with_equal_weights(estimator):
    x, logits, z, mu, logvar = _toy_batch(seed=1)
    t = bt.btcvae_loss(x, logits, z, mu, logvar, 1000, alpha=4.0, beta=4.0, gamma=4.0, estimator=estimator)
    one_sample_kl = (Normal(mu, torch.exp(0.5 * logvar)).log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum(1)
    assert t["loss"].item() == pytest.approx((t["recon"] + 4.0 * one_sample_kl.mean()).item(), rel=1e-5)
    cfg = bt.make_config(["--beta-vae", "4"])
    assert (cfg["alpha"], cfg["beta"], cfg["gamma"]) == (4.0, 4.0, 4.0)
    assert bt.objective_name(cfg).startswith("eq. 2")


def test_estimator_none_needs_equal_weights():
    x, logits, z, mu, logvar = _toy_batch()
    with pytest.raises(ValueError, match="alpha = beta = gamma"):
        bt.btcvae_loss(x, logits, z, mu, logvar, 1000, alpha=1.0, beta=6.0, gamma=1.0, estimator=None)


@pytest.mark.parametrize("arch", ["conv", "mlp"])
def test_model_shapes_and_gradients(arch):
    torch.manual_seed(0)
    model = bt.BetaTCVAE((1, 64, 64), cont=10, arch=arch)
    x = torch.rand(6, 1, 64, 64)
    out = model(x)
    assert out["x_logits"].shape == (6, 1, 64, 64) and out["z"].shape == (6, 10)
    t = bt.btcvae_loss(x, out["x_logits"], out["z"], out["mu"], out["logvar"], 100, estimator="mss")
    t["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    if arch == "mlp":  # supp. H.1: 4096-1200-1200-2D and D-1200-1200-1200-4096
        enc = 4096 * 1200 + 1200 + 1200 * 1200 + 1200 + 1200 * 20 + 20
        dec = 10 * 1200 + 1200 + 2 * (1200 * 1200 + 1200) + 1200 * 4096 + 4096
        assert sum(p.numel() for p in model.parameters()) == enc + dec
    model.eval()
    assert torch.equal(model(x)["z"], model(x)["mu"])


# --------------------------------------------------------------------------- presets and flags


def test_presets_follow_supplement_h():
    cfg = bt.make_config([])
    assert cfg["dataset"] == "shapes"
    assert (cfg["lr"], cfg["batch_size"], cfg["cont"], cfg["epochs"]) == (1e-3, 2048, 10, 50)
    assert (cfg["alpha"], cfg["beta"], cfg["gamma"], cfg["estimator"]) == (1.0, 6.0, 1.0, "mws")
    assert cfg["arch"] == "mlp" and bt.make_config(["--dataset", "dsprites"])["arch"] == "mlp"  # supp. H.1
    assert bt.make_config(["--dataset", "celeba"])["arch"] == "conv"
    assert bt.objective_name(cfg).startswith("eq. 5")
    assert bt.runs.num_iterations(cfg, 737280) == 18000
    assert bt.make_config(["--dataset", "celeba"])["batch_size"] == 1000
    cfg = bt.make_config(["--dataset", "mnist", "--estimator", "mss", "--beta", "2"])
    assert (cfg["batch_size"], cfg["estimator"], cfg["beta"], cfg["eval_split"]) == (64, "mss", 2.0, "test")
    assert bt.objective_name(dict(alpha=1.0, beta=1.0, gamma=1.0)).startswith("eq. 1")


# --------------------------------------------------------------------------- smoke, resume, bad input

SMOKE = ["--dataset", "shapes", "--batch-size", "16", "--log-every", "5", "--eval-samples", "600",
         "--metric-votes", "20", "--eval-batch-size", "256", "--no-progress", "--device", "cpu"]


def test_smoke_run_on_shapes_writes_every_file(tmp_path):
    out = tmp_path / "run"
    res = bt.main(SMOKE + ["--iterations", "20", "--estimator", "mss", "--out", str(out)])
    for name in ("config.json", "log.csv", "checkpoint.pt", "metrics.json", "reconstructions.png",
                 "samples.png", "traversals.png", "mig_matrix.png", "latent_vs_factor.png",
                 "decomposition_during_training.png", "kl_during_training.png", "loss.png"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [5, 10, 15, 20]
    assert {"mi", "tc", "dwkl", "kl", "kl_z0", "kl_z9", "img_per_s"} <= set(rows[0])
    for r in rows:   # the batch terms add up to the one-sample KL, whatever their constants
        assert float(r["loss"]) == pytest.approx(float(r["recon"]) + float(r["mi"]) + 6 * float(r["tc"])
                                                 + float(r["dwkl"]), rel=1e-4)
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_eval"] == 600 and len(m["kl_per_unit"]) == 10 and m["estimator"] == "mss"
    for key in ("mig", "mig_5factors", "factor_vae_score"):  # shapes has factors: every metric exists
        assert m[key] is not None and 0.0 <= m[key] <= 1.0 and key not in m["null_reasons"], key
    dec = m["decomposition"]
    for key in ("mi", "tc", "dwkl", "kl_mc", "kl_analytic", "log_px", "elbo", "mi_se", "tc_se",
                "dwkl_se", "kl_mc_se", "n_data", "n_samples", "dwkl_per_unit", "elbo_mc"):
        assert key in dec, key
    assert dec["n_data"] == 600 and dec["mi"] <= math.log(600)
    assert dec["mi"] + dec["tc"] + dec["dwkl"] == pytest.approx(dec["kl_mc"], abs=1e-6)
    assert dec["log_px"] < 0 and dec["elbo"] == pytest.approx(dec["log_px"] - dec["kl_analytic"])
    assert res["dataset"] == "shapes"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["objective"].startswith("eq. 5") and cfg["iterations_total"] == 20


def _params(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _error_of(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        bt.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and err[-1].startswith("btcvae.py: error:")
    return err[-1]


def test_bad_flags_give_one_sentence(capsys, tmp_path):
    assert "eq. 5" in _error_of(capsys, ["--beta", "-1", "--out", str(tmp_path)])
    assert "drop --beta" in _error_of(capsys, ["--beta-vae", "4", "--beta", "2"])
    assert "M = B - 1" in _error_of(capsys, ["--estimator", "mss", "--batch-size", "1"])
    assert "invalid choice" in _error_of(capsys, ["--dataset", "cifar"])
    assert "invalid choice" in _error_of(capsys, ["--estimator", "naive"])
    assert "--checkpoint" in _error_of(capsys, ["--eval-only"])
    assert "--decomp-samples" in _error_of(capsys, ["--decomp-samples", "-1"])
    assert "exceeds" in _error_of(capsys, ["--dataset", "shapes", "--batch-size", "800000", "--iterations", "1",
                                           "--no-progress", "--out", str(tmp_path / "r")])
    msg = _error_of(capsys, ["--dataset", "mnist", "--data-dir", str(tmp_path / "nowhere"), "--no-download",
                             "--iterations", "1", "--out", str(tmp_path / "r")])
    assert "MNIST" in msg


def test_estimator_bad_input_is_one_sentence():
    z, mu, logvar = _posteriors(8, 3)
    with pytest.raises(ValueError, match="smaller than the batch size"):
        bt.decompose_kl(z, mu, logvar, dataset_size=4)
    with pytest.raises(ValueError, match="at least 2"):
        bt.decompose_kl(z[:1], mu[:1], logvar[:1], dataset_size=100, estimator="mss")
    with pytest.raises(ValueError, match="smaller than the batch size"):
        bt.mss_log_weights(8, 4)
    with pytest.raises(ValueError, match="'mws' or 'mss'"):
        bt.decompose_kl(z, mu, logvar, 100, estimator="naive")
    # MWS with a single sample is eq. S4 with M = 1: defined, and still adds up.
    t = bt.decompose_kl(z[:1], mu[:1], logvar[:1], 100, estimator="mws")
    assert torch.allclose(t["mi"] + t["tc"] + t["dwkl"], t["log_qz_x"] - t["log_pz"])


def test_nan_loss_stops_and_keeps_the_checkpoint(capsys, tmp_path, monkeypatch):
    out = tmp_path / "run"
    bt.main(SMOKE + ["--no-eval", "--iterations", "5", "--out", str(out)])
    digest = hashlib.sha256((out / "checkpoint.pt").read_bytes()).hexdigest()
    real_batches = bt.data.batches

    def poisoned(*a, **k):
        for idx, x in real_batches(*a, **k):
            yield idx, torch.full_like(x, float("nan"))

    monkeypatch.setattr(bt.data, "batches", poisoned)
    msg = _error_of(capsys, ["--resume", str(out), "--iterations", "10", "--no-progress"])
    assert "NaN" in msg and "checkpoint" in msg
    assert hashlib.sha256((out / "checkpoint.pt").read_bytes()).hexdigest() == digest
    assert not os.path.exists(str(out / "checkpoint.pt.tmp"))


def test_corrupt_or_foreign_checkpoint_is_one_sentence(capsys, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert "corrupt" in _error_of(capsys, ["--eval-only", "--checkpoint", str(bad)])
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    assert "not a btcvae.py training checkpoint" in _error_of(capsys, ["--eval-only", "--checkpoint", str(foreign)])
    assert "does not exist" in _error_of(capsys, ["--eval-only", "--checkpoint", str(tmp_path / "none.pt")])


def test_eval_only_takes_the_architecture_from_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    bt.main(SMOKE + ["--iterations", "3", "--cont", "4", "--no-eval", "--out", str(out)])
    res = bt.main(["--eval-only", "--checkpoint", str(out), "--dataset", "shapes", "--eval-samples", "300",
                   "--metric-votes", "10", "--decomp-samples", "100", "--no-progress", "--device", "cpu",
                   "--out", str(tmp_path / "eval")])
    assert res["step"] == 3 and len(res["kl_per_unit"]) == 4
    assert res["decomposition"]["n_samples"] == 100 and res["decomposition"]["n_data"] == 300
    assert (tmp_path / "eval" / "metrics.json").stat().st_size > 0
    assert json.loads((tmp_path / "eval" / "eval_config.json").read_text())["cont"] == 4
