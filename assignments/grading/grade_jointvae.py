"""Grading tests for jointvae.py (Dupont 2018): each checks an equation's values and
properties (closed forms, distributions, bounds), never how the answer is laid out inside."""

import math

import torch
import torch.nn.functional as F
from scipy import stats

from gradelib import bernoulli_nll, check_reparameterize, grades, gumbel_logistic_p, isolated


@grades("jointvae.reparameterize")
def test_reparameterize_is_a_gaussian_sample_with_pathwise_gradients(jointvae):
    check_reparameterize(jointvae.reparameterize, "logvar")


# --------------------------------------------------------------------------- eq. 8


@grades("jointvae.sample_gumbel_softmax")
def test_gumbel_softmax_lies_on_the_simplex_and_is_differentiable(jointvae):
    torch.manual_seed(1)
    logits = (torch.randn(500, 6, dtype=torch.float64) * 2).requires_grad_()
    for tau in (0.3, 1.0, 4.0):
        y = jointvae.sample_gumbel_softmax(logits, tau)
        assert tuple(y.shape) == (500, 6), f"y has shape {tuple(y.shape)}, expected (B, K) = (500, 6)"
        assert (y >= 0).all() and torch.allclose(y.sum(-1), torch.ones(500, dtype=y.dtype), atol=1e-6), \
            "each y must be a point of the simplex (y_k >= 0, sum_k y_k = 1)"
    y.sum(0)[0].backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0, \
        "y must be differentiable in the logits (the point of the relaxation)"


@grades("jointvae.sample_gumbel_softmax")
def test_gumbel_softmax_log_ratios_are_logistic_at_every_temperature(jointvae):
    """eq. 8: tau (log y_a - log y_b) = log alpha_a - log alpha_b + g_a - g_b, and the
    difference of two independent Gumbel(0, 1) draws is Logistic(0, 1)."""
    torch.manual_seed(2)
    alpha = torch.tensor([0.45, 0.3, 0.15, 0.07, 0.03], dtype=torch.float64)
    logits = torch.log(alpha) + 0.7                     # unnormalised logits: alpha = softmax(logits)
    for tau in (0.5, 2.0):
        y = jointvae.sample_gumbel_softmax(logits.expand(20000, 5).clone(), tau)
        for a, b in ((0, 1), (2, 4)):
            p = gumbel_logistic_p(y, torch.log(alpha), tau, a, b)
            assert p > 1e-4, (f"at tau = {tau}, tau * log(y_{a} / y_{b}) - log(alpha_{a} / alpha_{b}) is not "
                              f"Logistic(0, 1) (KS p = {p:.1e}): eq. 8 divides (log alpha + g) by tau")


@grades("jointvae.sample_gumbel_softmax")
def test_gumbel_softmax_argmax_is_a_draw_from_alpha(jointvae):
    torch.manual_seed(3)
    alpha = torch.tensor([0.5, 0.25, 0.15, 0.07, 0.03])
    n = 20000
    y = jointvae.sample_gumbel_softmax(torch.log(alpha).expand(n, 5).clone(), 0.67)
    counts = torch.bincount(y.argmax(-1), minlength=5).numpy()
    p = stats.chisquare(counts, (alpha * n).numpy()).pvalue
    assert p > 1e-4, f"argmax_k y_k is not distributed as Categorical(alpha) (chi-square p = {p:.1e}): Gumbel-max"


# --------------------------------------------------------------------------- App. A.2, App. C


@grades("jointvae.kl_categorical_uniform")
def test_categorical_kl_matches_the_closed_form(jointvae):
    torch.manual_seed(4)
    for k in (2, 3, 10):
        probs = torch.softmax(torch.randn(50, k, dtype=torch.float64) * 3, -1)
        kl = jointvae.kl_categorical_uniform(probs)
        assert tuple(kl.shape) == (50,), f"the KL has shape {tuple(kl.shape)}, expected one value per sample (50,)"
        expected = (probs * torch.log(probs * k)).sum(-1)
        assert torch.allclose(kl.double(), expected, atol=1e-6), \
            f"K = {k}: KL(q || Uniform(K)) = sum_k alpha_k log(alpha_k K); got {kl[:3].tolist()}, " \
            f"expected {expected[:3].tolist()}"


@grades("jointvae.kl_categorical_uniform")
def test_categorical_kl_bounds_zero_and_log_k(jointvae):
    for k in (2, 7):
        uniform = jointvae.kl_categorical_uniform(torch.full((3, k), 1.0 / k))
        assert torch.allclose(uniform.double(), torch.zeros(3, dtype=torch.float64), atol=1e-6), \
            f"KL(uniform || uniform) must be 0, got {uniform.tolist()}"
        onehot = jointvae.kl_categorical_uniform(F.one_hot(torch.arange(k), k).float())
        assert torch.allclose(onehot.double(), torch.full((k,), math.log(k), dtype=torch.float64), atol=1e-5), \
            f"a one-hot q has KL log K = {math.log(k):.4f} (App. C, the bound), got {onehot.tolist()}"


@grades("jointvae.kl_categorical_uniform")
def test_categorical_kl_gradient_is_finite_when_softmax_underflows(jointvae):
    logits = torch.tensor([[0.0, 120.0, -120.0], [3.0, 1.0, 0.0]], requires_grad=True)
    probs = torch.softmax(logits, -1)
    kl = jointvae.kl_categorical_uniform(probs)
    kl.sum().backward()
    assert torch.isfinite(logits.grad).all(), \
        "the gradient is NaN where softmax underflows to 0: guard the log (see the docstring)"
    assert abs(kl[0].item() - math.log(3)) < 1e-5


@grades("jointvae.linear_capacity")
def test_capacity_rises_linearly_then_holds(jointvae):
    cases = [((0, 0.0, 5.0, 25000), 0.0), ((12500, 0.0, 5.0, 25000), 2.5), ((25000, 0.0, 5.0, 25000), 5.0),
             ((10 ** 6, 0.0, 5.0, 25000), 5.0), ((50, 1.0, 3.0, 100), 2.0), ((1, 0.0, 10.0, 4), 2.5),
             ((300, 2.0, 2.0, 100), 2.0)]
    for args, expected in cases:
        got = float(jointvae.linear_capacity(*args))
        assert abs(got - expected) < 1e-9, f"linear_capacity{args} = {got}, expected {expected} (App. C)"


# --------------------------------------------------------------------------- eq. 7 and the baselines


def _toy(b=5, d=3, ks=(10, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 1, 32, 32, generator=g).round()
    logits = torch.randn(b, 1, 32, 32, generator=g)
    mu, logvar = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g) * 0.3
    alphas = [torch.softmax(torch.randn(b, k, generator=g) * 2, -1) for k in ks]
    return x, logits, mu, logvar, alphas


def _kl_z(mu, logvar):
    """Batch mean of KL(N(mu, sigma^2) || N(0, I)) summed over units, and per unit."""
    units = (0.5 * (mu.double() ** 2 + logvar.double().exp() - 1 - logvar.double())).mean(0)
    return units.sum().item(), units


def _kl_c(alphas):
    per_var = [(a.double() * torch.log(a.double() * a.shape[1])).sum(1).mean().item() for a in alphas]
    return sum(per_var), per_var


def _loss(jointvae, *args, **kw):
    with isolated(jointvae, "kl_categorical_uniform", "linear_capacity"):
        return jointvae.jointvae_loss(*args, **kw)


@grades("jointvae.jointvae_loss")
def test_eq7_terms_are_batch_means_and_add_up(jointvae):
    x, logits, mu, logvar, alphas = _toy()
    for step, c_max in ((1000, 5.0), (100, 60.0)):     # KL above and below the capacity: |KL - C|
        t = _loss(jointvae, x, logits, mu, logvar, alphas, step=step, gamma=30.0,
                  c_cont=(0.0, c_max, 200), c_disc=(0.0, 0.5, 25000))
        recon = bernoulli_nll(x, logits).mean().item()
        kl_z, kl_z_units = _kl_z(mu, logvar)
        kl_c, kl_c_vars = _kl_c(alphas)
        c_z, c_c = c_max * min(step / 200, 1.0), 0.5 * step / 25000
        assert abs(float(t["recon"]) - recon) < 1e-4 * recon, \
            f"recon = {float(t['recon']):.4f}, expected {recon:.4f}: Bernoulli NLL summed over pixels, batch mean"
        assert abs(float(t["kl_cont"]) - kl_z) < 1e-5 * max(1.0, kl_z), \
            f"kl_cont = {float(t['kl_cont']):.5f}, expected {kl_z:.5f}: KL(q(z|x)||p(z)) summed over units, " \
            "averaged over the batch"
        assert abs(float(t["kl_disc"]) - kl_c) < 1e-5 * max(1.0, kl_c), \
            f"kl_disc = {float(t['kl_disc']):.5f}, expected {kl_c:.5f}: sum over variables of the batch-mean KL"
        assert torch.allclose(t["kl_cont_units"].double(), kl_z_units, atol=1e-5), "kl_cont_units: (D,) batch means"
        assert torch.allclose(t["kl_disc_vars"].double(), torch.tensor(kl_c_vars, dtype=torch.float64), atol=1e-5), \
            "kl_disc_vars: (V,) one batch-mean KL per discrete variable"
        assert abs(float(t["c_cont"]) - c_z) < 1e-9 and abs(float(t["c_disc"]) - c_c) < 1e-9, \
            f"capacities ({float(t['c_cont'])}, {float(t['c_disc'])}), expected ({c_z}, {c_c}) at step {step}"
        expected = recon + 30.0 * abs(kl_z - c_z) + 30.0 * abs(kl_c - c_c)
        assert abs(float(t["loss"]) - expected) < 1e-5 * expected, \
            f"loss = {float(t['loss']):.4f}, expected recon + gamma|KL_z - C_z| + gamma|KL_c - C_c| = {expected:.4f}"


@grades("jointvae.jointvae_loss")
def test_discrete_capacity_is_clipped_at_sum_log_k(jointvae):
    x, logits, mu, logvar, alphas = _toy(ks=(10,))
    t = _loss(jointvae, x, logits, mu, logvar, alphas, step=25000, gamma=30.0,
              c_cont=(0.0, 5.0, 25000), c_disc=(0.0, 5.0, 25000))
    assert abs(float(t["c_disc"]) - math.log(10)) < 1e-6, \
        f"C_c = {float(t['c_disc'])}: the schedule's 5 nats exceed log 10, the most a 10-way code holds (App. C)"
    assert abs(float(t["c_cont"]) - 5.0) < 1e-9, "C_z is not clipped"
    kl_c = _kl_c(alphas)[0]
    expected = (bernoulli_nll(x, logits).mean().item() + 30 * abs(_kl_z(mu, logvar)[0] - 5)
                + 30 * abs(kl_c - math.log(10)))
    assert abs(float(t["loss"]) - expected) < 1e-5 * expected, "the loss must use the clipped C_c"
    x, logits, mu, logvar, alphas = _toy(ks=(2, 2, 2))
    t = _loss(jointvae, x, logits, mu, logvar, alphas, step=100000, gamma=300.0,
              c_cont=(0.0, 30.0, 100000), c_disc=(0.0, 5.0, 100000))
    assert abs(float(t["c_disc"]) - 3 * math.log(2)) < 1e-6, \
        f"C_c = {float(t['c_disc'])}, expected sum_i log K_i = 3 log 2 for three binary variables"
    t = _loss(jointvae, x, logits, mu, logvar, alphas, step=10000, gamma=300.0,
              c_cont=(0.0, 30.0, 100000), c_disc=(0.0, 5.0, 100000))
    assert abs(float(t["c_disc"]) - 0.5) < 1e-9, "below sum_i log K_i, C_c follows the ramp"


@grades("jointvae.jointvae_loss")
def test_baselines_eq1_eq3_eq6(jointvae):
    x, logits, mu, logvar, alphas = _toy(ks=(10,))
    cap = dict(step=5000, gamma=30.0, c_cont=(0.0, 5.0, 25000), c_disc=(0.0, 5.0, 25000))
    recon, kl_z, kl_c = bernoulli_nll(x, logits).mean().item(), _kl_z(mu, logvar)[0], _kl_c(alphas)[0]
    cases = [
        ("eq. 6 (beta, joint)", dict(alphas=alphas, beta=4.0), recon + 4 * (kl_z + kl_c)),
        ("eq. 3 (capacity, no discrete latent)", dict(alphas=[]), recon + 30 * abs(kl_z - 1.0)),
        ("eq. 1 (beta, no discrete latent)", dict(alphas=[], beta=4.0), recon + 4 * kl_z),
    ]
    for name, kw, expected in cases:
        disc = kw.pop("alphas")
        t = _loss(jointvae, x, logits, mu, logvar, disc, **kw, **cap)
        assert abs(float(t["loss"]) - expected) < 1e-5 * expected, \
            f"{name}: loss = {float(t['loss']):.4f}, expected {expected:.4f}"
        if not disc:
            assert float(t["kl_disc"]) == 0.0, f"{name}: kl_disc must be 0 without discrete latents"


@grades("jointvae.jointvae_loss")
def test_loss_gradients_reach_the_encoder_outputs(jointvae):
    x, logits, mu, logvar, alphas = _toy()
    leaves = [t.clone().requires_grad_() for t in (logits, mu, logvar)]
    raw = [torch.log(a).clone().requires_grad_() for a in alphas]
    t = _loss(jointvae, x, leaves[0], leaves[1], leaves[2], [torch.softmax(r, -1) for r in raw],
              step=10, gamma=30.0, c_cont=(0.0, 5.0, 100), c_disc=(0.0, 5.0, 100))
    t["loss"].backward()
    for name, leaf in zip(("x_logits", "mu", "logvar", "alpha logits"), leaves + raw[:1]):
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0, \
            f"the loss has no gradient with respect to {name}"
    assert math.isfinite(t["loss"].item())
