"""What the grading tests share: the `grades` tag, independent reference implementations of
the graded functions, and `isolated`, which grades one function with the other graded
functions it calls replaced by those references (so a student's wrong helper costs the
helper's points, not its callers' too).

The references are written from the papers, not copied from the solution, and where a
choice is free they choose differently from it (the MSS stratum weight sits at
(i - 1) mod B here, at (i + 1) mod B in btcvae.py), so the callers' tests also show that
the layout is not graded.
"""

import contextlib
import itertools
import math
import os

import numpy as np
import torch

LOG_2PI = math.log(2 * math.pi)


def grades(function):
    """Tag a grading test with the marked function ("module.function") it grades."""
    def tag(test):
        test.grades = function
        return test
    return tag


# --------------------------------------------------------------------------- references


def kl_categorical_uniform(probs):
    """sum_k p_k log(p_k K), with 0 log 0 = 0 (App. A.2)."""
    k = probs.shape[-1]
    safe = torch.where(probs > 0, probs, torch.ones_like(probs))
    return (probs * (torch.log(safe) + math.log(k))).sum(dim=-1)


def linear_capacity(step, c_min, c_max, num_iters):
    """App. C: linear from c_min at step 0 to c_max at num_iters, then held."""
    frac = 1.0 if step >= num_iters else float(step) / float(num_iters)
    return float(c_min) * (1.0 - frac) + float(c_max) * frac


def mss_log_weights(batch_size, dataset_size):
    """eq. S6 with n_M = (i - 1) mod B: another correct layout than btcvae.py's."""
    b, n = int(batch_size), int(dataset_size)
    m = b - 1
    w = np.full((b, b), 1.0 / m)
    for i in range(b):
        w[i, i] = 1.0 / n
        w[i, (i - 1) % b] = (n - m) / (n * m)
    return torch.from_numpy(np.log(w))


def log_qz_mws(mat, dataset_size):
    """eq. S4: log (1/(N M)) sum_j prod_d q(z_id|x_j), M = B; footnote 2 per dimension."""
    shift = -math.log(int(dataset_size)) - math.log(mat.shape[1])
    return torch.logsumexp(mat.sum(2), 1) + shift, torch.logsumexp(mat, 1) + shift


def log_qz_mss(mat, log_w):
    """eq. S6: log sum_j w_ij prod_d q(z_id|x_j) and log sum_j w_ij q(z_id|x_j)."""
    return (torch.logsumexp(mat.sum(2) + log_w, 1),
            torch.logsumexp(mat + log_w[:, :, None], 1))


def _log_normal(z, mu, logvar):
    return -0.5 * (LOG_2PI + logvar + (z - mu) ** 2 / torch.exp(logvar))


def decompose_kl(z, mu, logvar, dataset_size, estimator="mws"):
    """eq. 3 per sample with the eq. S4 / S6 estimates above, all from the (B, B, D) matrix."""
    b = z.shape[0]
    mat = _log_normal(z[:, None, :], mu[None], logvar[None])          # (B, B, D)
    if estimator == "mws":
        log_qz, log_qzd = log_qz_mws(mat, dataset_size)
    else:
        log_qz, log_qzd = log_qz_mss(mat, mss_log_weights(b, dataset_size).to(z))
    log_qz_x = _log_normal(z, mu, logvar).sum(1)
    log_pz = _log_normal(z, torch.zeros_like(z), torch.zeros_like(z)).sum(1)
    log_prod = log_qzd.sum(1)
    return dict(mi=log_qz_x - log_qz, tc=log_qz - log_prod, dwkl=log_prod - log_pz, log_qz_x=log_qz_x,
                log_qz=log_qz, log_prod_qzd=log_prod, log_pz=log_pz)


def relieved_dims(step, m, r, t_d, schedule="paper"):
    """Algorithm 1 (paper): floor(t / r); the authors' code: ceil(t / r), one period less after t_d."""
    step, m = int(step), int(m)
    if schedule == "paper":
        n = step // r
    else:
        n = -(-step // r) - (1 if step > t_d else 0)
    return min(max(n, 0), m)


def same_class_pairs(d, num_disc):
    """Class counts and unordered same-class pairs, by counting."""
    labels = [int(v) for v in d]
    counts = torch.tensor([labels.count(k) for k in range(num_disc)], dtype=torch.float32)
    pairs = sum(1 for i, j in itertools.combinations(range(len(labels)), 2) if labels[i] == labels[j])
    return counts, torch.tensor(float(pairs))


REFERENCES = {
    "jointvae.kl_categorical_uniform": kl_categorical_uniform,
    "jointvae.linear_capacity": linear_capacity,
    "btcvae.mss_log_weights": mss_log_weights,
    "btcvae.log_qz_mws": log_qz_mws,
    "btcvae.log_qz_mss": log_qz_mss,
    "btcvae.decompose_kl": decompose_kl,
    "cascadevae.relieved_dims": relieved_dims,
    "cascadevae.same_class_pairs": same_class_pairs,
}


@contextlib.contextmanager
def isolated(module, *names):
    """Replace module.<name> by its reference for the duration: the graded function's own
    code calls the helpers through the module's globals, so it sees the references."""
    saved = {name: getattr(module, name) for name in names}
    try:
        for name in names:
            setattr(module, name, REFERENCES[f"{os.path.splitext(os.path.basename(module.__file__))[0]}.{name}"])
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


# --------------------------------------------------------------------------- shared checks


def bernoulli_nll(x, logits):
    """-sum over pixels of log Bernoulli(x; sigmoid(logits)), per image, written out."""
    p = torch.sigmoid(logits.double())
    x = x.double()
    return -(x * torch.log(p) + (1 - x) * torch.log1p(-p)).reshape(x.shape[0], -1).sum(1)


def check_reparameterize(fn, kind):
    """Any z = mu + sigma * eps with eps ~ N(0, I) drawn afresh: (z - mu) / sigma is standard
    normal, and the gradients are those of the reparameterisation, dz/dmu = 1 and
    dz/dlogvar = sigma * eps / 2 (kind "logvar") or dz/dsigma = eps (kind "sigma")."""
    from scipy import stats

    torch.manual_seed(0)
    n = 100_000
    mu0 = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    lv0 = torch.tensor([0.0, -1.5, 1.2], dtype=torch.float64)
    sd0 = torch.exp(0.5 * lv0)
    mu = mu0.expand(n, 3).clone().requires_grad_()
    arg = (lv0 if kind == "logvar" else sd0).expand(n, 3).clone().requires_grad_()
    z = fn(mu, arg)
    assert tuple(z.shape) == (n, 3), f"z has shape {tuple(z.shape)}, expected the shape of mu, {(n, 3)}"
    eps = ((z - mu) / sd0).detach()                                   # (N, 3): must be N(0, 1) draws
    assert eps.mean(0).abs().max().item() < 5 / math.sqrt(n), \
        f"the mean of z is {z.detach().mean(0).tolist()}, expected mu = {mu0.tolist()}"
    assert (eps.var(0) - 1).abs().max().item() < 0.03, \
        f"z has variance {(eps.var(0) * sd0 ** 2).tolist()}, expected sigma^2 = {(sd0 ** 2).tolist()}"
    for j in range(3):
        p = stats.kstest(eps[:20_000, j].numpy(), "norm").pvalue
        assert p > 1e-4, f"(z - mu) / sigma is not standard normal in dim {j} (KS p = {p:.1e})"
    z.sum().backward()
    assert mu.grad is not None and torch.allclose(mu.grad, torch.ones_like(mu.grad)), \
        "dz/dmu must be 1: z = mu + sigma * eps, a reparameterised sample that gradients flow through"
    expected = 0.5 * sd0 * eps if kind == "logvar" else eps
    assert arg.grad is not None and torch.allclose(arg.grad, expected, atol=1e-8), \
        f"dz/d{kind} must be {'sigma * eps / 2' if kind == 'logvar' else 'eps'}: sigma = " \
        f"{'exp(logvar / 2)' if kind == 'logvar' else 'the sigma given'}, eps the noise of this sample"
    small = torch.zeros(2, 3, dtype=torch.float64)
    assert not torch.equal(fn(small, small + (0.0 if kind == "logvar" else 1.0)),
                           fn(small, small + (0.0 if kind == "logvar" else 1.0))), \
        "two calls gave the same z: eps must be drawn afresh at every call"


def gumbel_logistic_p(y, log_alpha, tau, a, b):
    """KS p-value that tau (log y_a - log y_b) - (log alpha_a - log alpha_b) ~ Logistic(0, 1),
    which holds exactly for eq. 8 (the difference of two Gumbel(0, 1) draws is logistic)."""
    from scipy import stats

    t = tau * (torch.log(y[:, a]) - torch.log(y[:, b])) - (log_alpha[a] - log_alpha[b])
    return stats.kstest(t.detach().numpy(), "logistic").pvalue
