"""cascadevae.py: the eq. 6 assignment against brute force, the cascade schedule at its
boundaries, the loss terms against an independent computation, Lemma 1, the unary
decode, a smoke run, exact resume across t_d, and the bad-input sentences."""

import csv
import hashlib
import itertools
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

import cascadevae as cv

# --------------------------------------------------------------------------- eq. 6: assign


def _objective(u, d, lam):
    """sum_i u[i, d_i] - lam * (unordered same-class pairs), written out with a double loop."""
    b = len(d)
    pairs = sum(1 for i in range(b) for j in range(i + 1, b) if d[i] == d[j])
    return float(sum(u[i, d[i]] for i in range(b))) - lam * pairs


def _brute_force_best(u, lam):
    b, s = u.shape
    labellings = np.array(list(itertools.product(range(s), repeat=b)))      # (S^B, B)
    gain = u[np.arange(b), labellings].sum(axis=1)                          # (S^B,)
    counts = np.stack([(labellings == k).sum(axis=1) for k in range(s)], 1)  # (S^B, S)
    values = gain - lam * (counts * (counts - 1) / 2).sum(axis=1)
    return values.max(), labellings[values.argmax()]


@pytest.mark.parametrize("b,s", [(1, 2), (2, 3), (4, 2), (5, 3), (6, 2), (7, 3)])
@pytest.mark.parametrize("lam", [0.0, 0.05, 0.4, 2.0, 1e3])
def test_assign_equals_brute_force(b, s, lam):
    rng = np.random.default_rng(100 * b + s)
    for trial in range(4):
        if trial < 2:
            u = rng.normal(size=(b, s)) * 2.0                          # distinct values
        else:
            u = rng.integers(-2, 1, size=(b, s)).astype(float)          # many ties
        best, _ = _brute_force_best(u, lam)
        # slots=None: the default cap; ceil(B/S), the smallest feasible cap: forces the
        # widening loop; b: the plain (B, S*B) matrix.
        for slots in (None, -(-b // s), b):
            d = cv.assign(torch.from_numpy(u), lam, slots=slots)
            assert d.dtype == torch.int64 and d.shape == (b,) and int(d.min()) >= 0 and int(d.max()) < s
            assert _objective(u, d.tolist(), lam) == pytest.approx(best, abs=1e-9)


def test_assign_lam_zero_is_the_row_argmax_and_huge_lam_balances():
    torch.manual_seed(0)
    u = torch.randn(64, 10) * 50.0                                     # (B, S), no ties
    assert torch.equal(cv.assign(u, 0.0), u.argmax(dim=1))
    for b, s in ((64, 10), (10, 3), (7, 3)):
        u = torch.randn(b, s)
        u[:, 0] += 100.0                                               # every image prefers class 0 strongly
        counts = torch.bincount(cv.assign(u, 1e6), minlength=s)
        assert int(counts.max() - counts.min()) <= 1 and int(counts.sum()) == b
    # B = 64, S = 10 (too big for brute force): a necessary condition, moving any one
    # image to any other class never raises the objective.
    u = torch.randn(64, 10) * 3.0
    u[:, 0] += 4.0
    d = cv.assign(u, 0.5).tolist()
    base = _objective(u.numpy(), d, 0.5)
    assert _objective(u.numpy(), cv.assign(u, 0.5, slots=64).tolist(), 0.5) == pytest.approx(base, abs=1e-9)
    for i in range(64):
        for k in range(10):
            assert _objective(u.numpy(), d[:i] + [k] + d[i + 1:], 0.5) <= base + 1e-9
    # Small lam: the preference wins over the penalty, all images go to class 0.
    assert cv.assign(torch.tensor([[0.0, -10.0]] * 5), 0.1).tolist() == [0] * 5


def test_assign_counts_each_unordered_pair_once():
    # Two images both prefer class 0 by 1 nat. One unordered pair costs lam (the code's
    # convention); eq. 6 as printed (ordered pairs) would charge 2 lam.
    u = torch.tensor([[0.0, -1.0], [0.0, -1.0]])
    assert cv.assign(u, 0.8).tolist() == [0, 0]                        # 0.8 < 1: keep both in class 0
    assert sorted(cv.assign(u, 1.2).tolist()) == [0, 1]                # 1.2 > 1: split
    # numpy input works too, and the result is on the CPU
    assert cv.assign(u.numpy(), 0.8).device.type == "cpu"


def test_assign_rejects_negative_lam_and_nan():
    with pytest.raises(ValueError, match=">= 0"):
        cv.assign(torch.zeros(3, 2), -0.1)
    with pytest.raises(ValueError, match="NaN"):
        cv.assign(torch.tensor([[0.0, float("nan")]]), 0.1)


def test_assign_takes_a_tensor_lam_and_says_what_it_needs():
    u = torch.tensor([[0.0, -1.0], [0.0, -1.0]])
    assert cv.assign(u, torch.tensor(0.8)).tolist() == [0, 0]
    assert sorted(cv.assign(u, torch.tensor([1.2], dtype=torch.float64)).tolist()) == [0, 1]
    with pytest.raises(ValueError, match="one number"):
        cv.assign(u, torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="one number"):
        cv.assign(u, "a lot")


def test_assign_with_too_few_slots_is_a_value_error():
    # S * slots < B leaves images without a slot: refused, never read from uninitialised memory.
    with pytest.raises(ValueError, match=r"pass slots >= ceil\(B / S\) = 3"):
        cv.assign(torch.zeros(5, 2), 0.1, slots=2)
    with pytest.raises(ValueError, match="slots"):
        cv.assign(torch.zeros(5, 2), 0.1, slots=0)


def test_assign_is_exact_in_a_process_with_a_dirty_heap():
    # Fill and free many arrays first, so an uninitialised np.empty would hold garbage;
    # then every feasible slot cap must still give the brute-force optimum.
    code = """
import itertools, numpy as np, torch, cascadevae as cv
junk = [np.full(n, 7 * 10**17, dtype=np.int64) for n in range(1, 400) for _ in range(3)]
del junk
rng = np.random.default_rng(0)
for trial in range(200):
    b, s = int(rng.integers(1, 7)), int(rng.integers(2, 4))
    u, lam = rng.normal(size=(b, s)), float(rng.choice([0.0, 0.3, 5.0]))
    best = max(sum(u[i, d[i]] for i in range(b)) - lam * sum(d.count(k) * (d.count(k) - 1) / 2 for k in range(s))
               for d in map(list, itertools.product(range(s), repeat=b)))
    for slots in (None, -(-b // s), b):
        d = cv.assign(u, lam, slots=slots).tolist()
        assert all(0 <= k < s for k in d), d
        got = sum(u[i, d[i]] for i in range(b)) - lam * sum(d.count(k) * (d.count(k) - 1) / 2 for k in range(s))
        assert abs(got - best) < 1e-9, (got, best)
print("ok")
"""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


# --------------------------------------------------------------------------- cascade schedule


def test_cascade_betas_paper_boundaries():
    m, bh, bl, r, td = 6, 10.0, 1.0, 100, 250
    b = lambda t: cv.cascade_betas(t, m, bh, bl, r, td).tolist()  # noqa: E731
    assert b(0) == [10.0] * 6 and b(r - 1) == [10.0] * 6              # Algorithm 1: nothing before t = r
    assert b(r) == [1.0] + [10.0] * 5                                 # t = r: dim 0 relieved
    assert b(2 * r - 1) == [1.0] + [10.0] * 5
    assert b(td) == [1.0, 1.0] + [10.0] * 4                           # paper: t_d does not pause the cascade
    assert b(m * r - 1) == [1.0] * 5 + [10.0]
    assert b(m * r) == [1.0] * 6 and b(10 * m * r) == [1.0] * 6
    assert cv.cascade_betas(r, m, bh, bl, r, td).dtype == torch.float32


def test_cascade_betas_code_schedule():
    m, r, td = 6, 100, 400                                            # the code: t_d = 4 periods
    n = lambda t: cv.relieved_dims(t, m, r, td, schedule="code")     # noqa: E731
    assert n(0) == 0 and n(1) == 1 and n(r) == 1 and n(r + 1) == 2  # dim 0 at the first update
    assert n(td) == 4 and n(td + 1) == 4 and n(5 * r) == 4           # one period's pause after t_d
    assert n(5 * r + 1) == 5 and n(6 * r + 1) == 6 and n(100 * r) == 6
    assert cv.relieved_dims(1, 10, 10000, 0, "code") == 0            # MNIST t_d = 0: pause from the start
    with pytest.raises(ValueError, match="schedule"):
        cv.relieved_dims(1, 6, 10, 0, schedule="nope")


def test_cascadevae_c_code_schedule_never_pauses_at_t_d():
    # The authors' CascadeVAE-C has no discrete step: one more dim every r updates until
    # all m are relieved, whatever --t-d says (the pause used to start at t = t_d + 1).
    base = cv.make_config(["--dataset", "shapes", "--cont", "10", "--schedule", "code", "--t-d", "80000"])
    cfg_c = cv.make_config(["--dataset", "shapes", "--cont", "10", "--schedule", "code", "--t-d", "80000",
                            "--no-discrete"])
    r = cfg_c["r"]
    for t in (1, r, r + 1, 80000, 80001, 80758, 100000, 100001, 180001, 300000):
        n_c = int((cv.betas_at(cfg_c, t) == cfg_c["beta_l"]).sum())
        assert n_c == min(-(-t // r), 10), t                          # ceil(t / r), no pause
    assert int((cv.betas_at(base, 80758) == base["beta_l"]).sum()) == 4  # with d: the pause holds
    assert int((cv.betas_at(cfg_c, 80758) == cfg_c["beta_l"]).sum()) == 5


# --------------------------------------------------------------------------- loss terms, Lemma 1


def _toy(b=7, d=4, s=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 1, 32, 32, generator=g).round()                 # (B, 1, 32, 32) binary
    logits = torch.randn(b, 1, 32, 32, generator=g)
    mu = torch.randn(b, d, generator=g)
    sigma = torch.rand(b, d, generator=g) + 0.1
    dd = torch.randint(0, s, (b,), generator=g)
    return x, logits, mu, sigma, dd


def test_loss_terms_against_independent_computation():
    x, logits, mu, sigma, d = _toy()
    betas = torch.tensor([1.0, 10.0, 10.0, 0.5])
    lam, s = 0.3, 3
    t = cv.cascadevae_loss(x, logits, mu, sigma, betas, d, s, lam)
    p = torch.sigmoid(logits)
    recon = -(x * p.log() + (1 - x) * (1 - p).log()).reshape(7, -1).sum(1).mean()   # sum pixels, mean batch
    kl_units = torch.stack([kl_divergence(Normal(mu[:, j], sigma[:, j]), Normal(0.0, 1.0)).mean()
                            for j in range(4)])
    pairs = sum(1 for i in range(7) for j in range(i + 1, 7) if d[i] == d[j])
    assert t["recon"].item() == pytest.approx(recon.item(), rel=1e-5)
    assert torch.allclose(t["kl_units"], kl_units, rtol=1e-5, atol=1e-6)
    assert t["kl"].item() == pytest.approx(kl_units.sum().item(), rel=1e-5)
    assert t["weighted_kl"].item() == pytest.approx((betas * kl_units).sum().item(), rel=1e-5)
    assert t["penalty"].item() == pytest.approx(lam * pairs / 7, rel=1e-6)
    assert t["loss"].item() == pytest.approx((recon + (betas * kl_units).sum()).item() + lam * pairs / 7, rel=1e-5)
    q = np.bincount(d.numpy(), minlength=3) / 7.0
    h = -sum(v * math.log(v) for v in q if v > 0)
    assert t["h_d"].item() == pytest.approx(h, rel=1e-5)
    assert t["kl_d"].item() == pytest.approx(math.log(3) - h, abs=1e-6)
    assert t["lemma1_bound"].item() == pytest.approx(3 * (q ** 2).sum() - 1, rel=1e-5)
    # Before t_d (d = None): no penalty, and the loss is eq. 1 with per-dim betas.
    t0 = cv.cascadevae_loss(x, logits, mu, sigma, betas, None, s, lam)
    assert t0["penalty"].item() == 0.0
    assert t0["loss"].item() == pytest.approx((recon + (betas * kl_units).sum()).item(), rel=1e-5)


def test_lemma1_bound_and_pair_identity():
    rng = np.random.default_rng(0)
    for s in (2, 3, 10):
        for _ in range(50):
            q = rng.dirichlet(np.full(s, 0.3))
            kl = float(np.sum(q[q > 0] * np.log(q[q > 0] * s)))
            assert kl <= s * np.sum(q ** 2) - 1 + 1e-12                 # Lemma 1
    # sum_{i != j} 1[d_i = d_j] = B^2 sum_k q_k^2 - B = 2 * (unordered pairs)
    d = torch.tensor([0, 0, 1, 2, 2, 2, 1, 0, 0])
    counts, pairs = cv.same_class_pairs(d, 3)
    ordered = sum(1 for i in range(9) for j in range(9) if i != j and d[i] == d[j])
    assert counts.tolist() == [4.0, 2.0, 3.0] and pairs.item() == ordered / 2 == 6 + 1 + 3
    assert ordered == pytest.approx(81 * float(((counts / 9) ** 2).sum()) - 9)


def test_kl_normal_and_softplus_sigma():
    torch.manual_seed(0)
    mu, sigma = torch.randn(5, 3), torch.rand(5, 3) + 0.05
    ref = kl_divergence(Normal(mu, sigma), Normal(0.0, 1.0))
    assert torch.allclose(cv.kl_normal(mu, sigma), ref, atol=1e-5)
    model = cv.CascadeVAE((1, 32, 32), cont=3, disc=4)
    x = torch.rand(6, 1, 32, 32)
    h = model.encoder(x)                                               # (B, 2D) raw head
    m, sg, logvar = model.encode(x)
    assert m.shape == sg.shape == logvar.shape == (6, 3) and (sg > 0).all()
    assert torch.allclose(m, h[:, :3]) and torch.allclose(sg, F.softplus(h[:, 3:]))   # sigma = softplus
    assert torch.allclose(logvar, 2 * torch.log(sg + cv.SIGMA_EPS))


# --------------------------------------------------------------------------- model: u, d, one step


def test_unary_equals_per_class_decodes_and_infer_discrete_is_argmax():
    torch.manual_seed(1)
    model = cv.CascadeVAE((1, 32, 32), cont=3, disc=4).eval()
    x = torch.rand(5, 1, 32, 32).round()
    z = torch.randn(5, 3)
    u = model.unary(x, z)
    assert u.shape == (5, 4) and not u.requires_grad
    for k in range(4):
        logits = model.decode(torch.cat([z, F.one_hot(torch.full((5,), k), 4).float()], 1))
        ref = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").reshape(5, -1).sum(1)
        assert torch.allclose(u[:, k], ref, rtol=1e-5, atol=1e-3)
    mu = model.encode(x)[0]
    d, u_mu = model.infer_discrete(x, mu)
    assert torch.equal(d, u_mu.argmax(1)) and torch.allclose(u_mu, model.unary(x, mu))
    out = model(x, d)                                                  # eval mode: z = mu, decode (mu, e_d)
    assert torch.equal(out["z"], out["mu"])
    assert torch.allclose(-F.binary_cross_entropy_with_logits(out["x_logits"], x, reduction="none")
                          .reshape(5, -1).sum(1), u_mu.max(1).values, rtol=1e-5, atol=1e-3)


def test_alternating_step_reuses_z_and_zero_vector_before_t_d():
    torch.manual_seed(2)
    model = cv.CascadeVAE((1, 32, 32), cont=3, disc=3)
    x = torch.rand(8, 1, 32, 32).round()
    betas = torch.tensor([1.0, 10.0, 10.0])
    t = cv.alternating_step_terms(model, x, betas, lam=0.5, assign_discrete=True)
    d, u = t["d"], t["u"]
    assert torch.equal(d, cv.assign(u, 0.5))                          # the exact eq. 6 solution
    # The gradient step decodes the same z with e_d: its recon is -mean_i u[i, d_i].
    assert t["recon"].item() == pytest.approx(-u[torch.arange(8), d].mean().item(), rel=1e-5)
    t["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # Before t_d: d = None is the zero vector, so the decoder's d-columns get no gradient.
    model.zero_grad()
    t0 = cv.alternating_step_terms(model, x, betas, lam=0.5, assign_discrete=False)
    assert t0["d"] is None and t0["u"] is None and t0["penalty"].item() == 0.0
    t0["loss"].backward()
    w = model.decoder.to_features[0].weight.grad                      # (256, D + S)
    assert float(w[:, 3:].abs().max()) == 0.0 and float(w[:, :3].abs().max()) > 0.0
    # CascadeVAE-C: no discrete input at all.
    c = cv.CascadeVAE((1, 32, 32), cont=3, disc=0)
    assert c.decoder.to_features[0].weight.shape[1] == 3
    assert cv.alternating_step_terms(c, x, betas, 0.5, assign_discrete=True)["d"] is None


# --------------------------------------------------------------------------- presets and flags


def test_presets_follow_supplement_b_and_tables():
    cfg = cv.make_config(["--dataset", "shapes"])
    assert (cfg["cont"], cfg["disc"], cfg["lr"], cfg["lam"], cfg["r"], cfg["t_d"], cfg["iterations"],
            cfg["beta_h"], cfg["beta_l"], cfg["batch_size"]) == (6, 3, 3e-4, 0.001, 20000, 100000, 300000,
                                                                 10.0, 1.0, 64)
    cfg = cv.make_config(["--dataset", "fashion-mnist"])
    assert (cfg["cont"], cfg["disc"], cfg["lr"], cfg["lam"], cfg["r"], cfg["t_d"], cfg["iterations"]) == \
        (10, 10, 1e-4, 0.1, 10000, 0, 120000)
    cfg = cv.make_config(["--dataset", "mnist", "--lam", "0.5", "--cont", "4"])
    assert (cfg["lr"], cfg["lam"], cfg["cont"], cfg["eval_split"]) == (3e-4, 0.5, 4, "test")
    cfg = cv.make_config(["--dataset", "chairs"])
    assert (cfg["disc"], cfg["lr"], cfg["lam"], cfg["r"], cfg["t_d"], cfg["iterations"]) == \
        (3, 1e-4, 0.01, 20000, 60000, 150000)
    assert cv.objective_name(cv.make_config(["--dataset", "shapes"])).startswith("CascadeVAE (")
    assert cv.objective_name(cv.make_config(["--dataset", "shapes", "--no-discrete"])).startswith("CascadeVAE-C")
    assert cv.objective_name(cv.make_config(["--no-cascade", "--beta", "7"])).startswith("CascadeVAE-D")
    assert cv.objective_name(cv.make_config(["--no-cascade", "--beta", "4", "--no-discrete"])).startswith("beta-VAE")
    assert "never runs" in cv.objective_name(cv.make_config(["--dataset", "shapes", "--iterations", "100"]))


# --------------------------------------------------------------------------- smoke, resume, bad input

SMOKE = ["--dataset", "shapes", "--batch-size", "16", "--log-every", "5", "--eval-samples", "300",
         "--metric-votes", "10", "--eval-batch-size", "256", "--no-progress", "--device", "cpu",
         "--r", "4", "--t-d", "10"]


def _log(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_smoke_run_on_shapes_writes_every_file(tmp_path):
    out = tmp_path / "run"
    res = cv.main(SMOKE + ["--iterations", "20", "--out", str(out)])
    for name in ("config.json", "log.csv", "checkpoint.pt", "metrics.json", "reconstructions.png",
                 "samples_per_discrete.png", "traversals.png", "traversal_discrete.png",
                 "kl_during_training.png", "discrete_during_training.png", "loss.png", "confusion.png"):
        assert (out / name).stat().st_size > 0, name
    rows = _log(out / "log.csv")
    assert [int(r["step"]) for r in rows] == [5, 10, 15, 20]
    assert {"kl_z0", "kl_z5", "penalty", "h_d", "lemma1_bound", "relieved", "solve_ms", "img_per_s"} <= set(rows[0])
    assert [int(float(r["relieved"])) for r in rows] == [1, 2, 3, 5]     # floor(t / r), r = 4
    assert float(rows[1]["penalty"]) == 0.0 and float(rows[1]["solve_ms"]) == 0.0  # t <= t_d = 10
    assert float(rows[2]["penalty"]) > 0.0 and float(rows[3]["solve_ms"]) > 0.0    # t > t_d: assignment ran
    for r in rows[2:]:
        assert float(r["kl_d"]) <= float(r["lemma1_bound"]) + 1e-5                 # Lemma 1 per batch
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_eval"] == 300 and len(m["kl_per_unit"]) == 6 and sum(m["discrete_counts"]) == 300
    assert len(m["discrete_counts"]) == 3 and 0.0 <= m["h_d_eval"] <= math.log(3) + 1e-9
    # Three shapes, three codes: the best one-to-one map matches at least a third (pigeonhole),
    # and an accuracy is a count of the evaluated images.
    assert 1 / 3 - 1e-9 <= m["accuracy_hungarian"] <= m["accuracy_majority"] <= 1.0
    for key in ("accuracy_hungarian", "accuracy_majority"):
        assert abs(m[key] * m["n_eval"] - round(m[key] * m["n_eval"])) < 1e-6
    for key in ("mig", "mig_5factors", "factor_vae_score"):  # shapes has factors: every metric exists
        assert m[key] is not None and 0.0 <= m[key] <= 1.0 and key not in m["null_reasons"], key
    assert m["recon_eval"] > 0 and res["dataset"] == "shapes"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["objective"].startswith("CascadeVAE (") and cfg["iterations_total"] == 20


def _params(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_ablations_c_and_d(tmp_path):
    cv.main(SMOKE + ["--no-eval", "--iterations", "6", "--no-discrete", "--out", str(tmp_path / "c")])
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    assert cfg["objective"].startswith("CascadeVAE-C")
    assert _params(tmp_path / "c" / "checkpoint.pt")["decoder.to_features.0.weight"].shape[1] == 6
    # --eval-only takes the architecture and the step from the checkpoint.
    m = cv.main(["--eval-only", "--checkpoint", str(tmp_path / "c"), "--dataset", "shapes", "--eval-samples", "100",
                 "--metric-votes", "5", "--device", "cpu", "--out", str(tmp_path / "c_eval")])
    assert m["step"] == 6 and len(m["kl_per_unit"]) == 6 and m["accuracy_hungarian"] is None
    assert "--no-discrete" in m["null_reasons"]["accuracy_hungarian"]
    cv.main(SMOKE + ["--no-eval", "--iterations", "12", "--no-cascade", "--beta", "7", "--t-d", "5",
                     "--out", str(tmp_path / "d")])
    rows = _log(tmp_path / "d" / "log.csv")
    for r in rows:                                                      # one beta for every dim
        assert float(r["weighted_kl"]) == pytest.approx(7.0 * float(r["kl"]), rel=1e-4)
    assert float(rows[-1]["penalty"]) > 0.0
    assert json.loads((tmp_path / "d" / "config.json").read_text())["objective"].startswith("CascadeVAE-D")


def test_t_d_beyond_the_run_trains_cascadevae_c_and_says_so(tmp_path, capsys):
    out = tmp_path / "run"
    m = cv.main(SMOKE + ["--iterations", "6", "--t-d", "100", "--metric-votes", "5", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "never runs" in printed and "CascadeVAE-C" in printed
    assert m["accuracy_hungarian"] is None and "alternating step never ran" in m["null_reasons"]["accuracy_hungarian"]
    assert (out / "traversals.png").exists()
    for name in ("samples_per_discrete.png", "traversal_discrete.png", "confusion.png"):
        assert not (out / name).exists(), name
    assert float(_log(out / "log.csv")[-1]["penalty"]) == 0.0


def _error_of(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        cv.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1]


def test_bad_flags_give_one_sentence(capsys, tmp_path):
    msg = _error_of(capsys, ["--disc", "1", "--out", str(tmp_path)])
    assert msg.startswith("cascadevae.py: error:") and "S >= 2" in msg and "--no-discrete" in msg
    assert "lam' >= 0" in _error_of(capsys, ["--lam", "-0.1", "--out", str(tmp_path)])
    assert "--beta B" in _error_of(capsys, ["--no-cascade"])
    assert "--beta-h" in _error_of(capsys, ["--beta", "4"])
    assert "--r" in _error_of(capsys, ["--r", "0"])
    assert "t_d" in _error_of(capsys, ["--t-d", "-1"])
    assert "--cont" in _error_of(capsys, ["--cont", "0"])
    assert "invalid choice" in _error_of(capsys, ["--dataset", "cifar"])
    assert "invalid choice" in _error_of(capsys, ["--schedule", "fast"])
    assert "--checkpoint" in _error_of(capsys, ["--eval-only"])
    msg = _error_of(capsys, ["--dataset", "mnist", "--data-dir", str(tmp_path / "nowhere"), "--no-download",
                             "--iterations", "1", "--out", str(tmp_path / "r")])
    assert msg.startswith("cascadevae.py: error:") and "MNIST" in msg


def test_nan_loss_stops_and_keeps_the_checkpoint(capsys, tmp_path, monkeypatch):
    out = tmp_path / "run"
    cv.main(SMOKE + ["--no-eval", "--iterations", "5", "--t-d", "2", "--out", str(out)])
    digest = hashlib.sha256((out / "checkpoint.pt").read_bytes()).hexdigest()
    real_batches = cv.data.batches

    def poisoned(*a, **k):
        for idx, x in real_batches(*a, **k):
            yield idx, torch.full_like(x, float("nan"))

    monkeypatch.setattr(cv.data, "batches", poisoned)
    msg = _error_of(capsys, ["--resume", str(out), "--iterations", "10", "--no-progress"])  # t > t_d: in u
    assert "NaN" in msg and "checkpoint" in msg
    msg = _error_of(capsys, ["--resume", str(out), "--iterations", "10", "--no-progress", "--t-d", "50",
                                    "--force-resume"])
    assert "NaN" in msg and "checkpoint" in msg                         # t <= t_d: in the loss
    assert hashlib.sha256((out / "checkpoint.pt").read_bytes()).hexdigest() == digest
    assert not os.path.exists(str(out / "checkpoint.pt.tmp"))


def test_corrupt_checkpoint_is_one_sentence(capsys, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    msg = _error_of(capsys, ["--eval-only", "--checkpoint", str(bad), "--dataset", "shapes"])
    assert "corrupt" in msg
