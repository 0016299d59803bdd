"""beta-TCVAE: the ELBO's KL split into index-code MI, total correlation and dimension-wise KL.

Ricky T. Q. Chen, Xuechen Li, Roger Grosse, David Duvenaud, "Isolating Sources of
Disentanglement in Variational Autoencoders", NeurIPS 2018. Authors' code:
https://github.com/rtqichen/beta-tcvae (read for conventions only; nothing is copied).

    python btcvae.py --dataset shapes                        # supp. H preset, beta = 6 (Fig. 3)
    python btcvae.py --dataset shapes --beta-vae 4           # the beta-VAE baseline of Fig. 3
    python btcvae.py --dataset shapes --estimator mss        # supp. B.2 instead of B.1

Equation -> code
    sec 2.1 Gaussian q(z|x), N(0, I) prior, Bernoulli p(x|z) . BetaTCVAE, reparameterize, log_density_gaussian
    eq. S3-S4 minibatch weighted sampling (MWS) of log q(z), and (footnote 2) of
            log prod_j q(z_j) ...................... log_qz_matrix, log_qz_mws, decompose_kl("mws")
    eq. S5-S6 minibatch stratified sampling (MSS) .. mss_log_weights, log_qz_mss, decompose_kl("mss")
    eq. S7-S9 MSS unbiased for q(z), a lower bound in log .......... tests/test_btcvae.py
    eq. 3   E_p(n) KL(q(z|n)||p(z)) = index-code MI + TC + dimension-wise KL (supp. B) decompose_kl
    eq. 5   beta-TCVAE: recon + alpha*MI + beta*TC + gamma*dwKL ... btcvae_loss
    eq. 1, 2  ELBO (alpha = beta = gamma = 1), beta-VAE (all = B, `--beta-vae B`) btcvae_loss
    eq. 3 over the whole data set: exact q(z) = (1/N) sum_n q(z|n) . log_aggregate_posterior, elbo_decomposition
    eq. 6-7, supp. A.1-A.2, Table 2  MIG ............................ metrics.mig via evaluate
    Fig. 6, supp. D / Fig. S4  traversals, mean latent per factor ... save_figures
    supp. H hyperparameters; H.1 architectures ..................... PRESETS, --arch

Shapes: B batch, D latent units, N data set size (the N of eq. S4 / S6: the training set),
Q query points of the full-data estimator, C x H x W image. In the minibatch estimators M is
the paper's minibatch size: M = B in eq. S4, M = B - 1 in eq. S6. Where this file departs
from the paper or the authors' code, a `DEVIATION:` comment says so at that line.
"""

import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import data
import metrics
import nets
import runs
import scoring
import viz

LOG_2PI = math.log(2.0 * math.pi)

# ---------------------------------------------------------------------------
# Model: encoder -> (mu, logvar), reparameterised z, decoder -> Bernoulli logits (sec. 2.1)
# ---------------------------------------------------------------------------

def reparameterize(mu, logvar):
    """z = mu + sigma * eps, eps ~ N(0, I): a sample of q(z|x) that gradients flow through.

    mu, logvar (B, D) -> z (B, D), sigma = exp(logvar / 2).
    """
    # BEGIN SOLUTION: sec. 2.1 reparameterisation, return z = mu + sigma * eps (B, D)
    eps = torch.randn_like(mu)                 # (B, D)
    return mu + torch.exp(0.5 * logvar) * eps  # (B, D)
    # END SOLUTION

class BetaTCVAE(nn.Module):
    """q(z|x) = N(mu(x), diag sigma^2(x)), p(z) = N(0, I), p(x|z) Bernoulli (sec. 2.1)."""

    def __init__(self, image_size, cont, arch="conv"):
        super().__init__()
        self.cont, self.arch = int(cont), arch
        # NOTE: dSprites (and `shapes`) default to the paper's MLP (supp. H.1), as the authors'
        # code does; `--arch conv` trains the shared conv net (nets.py, Dupont 2018 App. B), so
        # that the three methods can be compared on one net.
        if arch == "mlp":
            # supp. H.1 (dSprites): 4096-1200-1200-2D ReLU encoder, D-1200-1200-1200-4096 tanh decoder.
            self.encoder = nets.MLPEncoder(image_size, 2 * self.cont)
            self.decoder = nets.MLPDecoder(image_size, self.cont)
        else:
            # DEVIATION: supp. H.1's conv nets for 3D faces, chairs and CelebA use BatchNorm; ours
            # has none: BatchNorm makes q(z|x) depend on the other images of the batch, which
            # eq. S4 / S6 assume it does not (each q(z|n_j) is evaluated at every z_i).
            self.encoder = nets.Encoder(image_size, 2 * self.cont)
            self.decoder = nets.Decoder(image_size, self.cont)

    def encode(self, x):
        """x (B, C, H, W) -> mu (B, D), logvar (B, D): one head, split in two."""
        h = self.encoder(x)                               # (B, 2D)
        return h[:, :self.cont], h[:, self.cont:]         # (B, D), (B, D)

    def decode(self, z):
        return self.decoder(z)                            # (B, C, H, W) logits

    def forward(self, x):
        """Training: z ~ q(z|x) reparameterised. Eval: z = mu (deterministic codes)."""
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar) if self.training else mu  # (B, D)
        return dict(x_logits=self.decode(z), mu=mu, logvar=logvar, z=z)

# ---------------------------------------------------------------------------
# Loss: eq. 5 (and eq. 1, eq. 2), eq. 3 terms from the minibatch (supp. B.1 MWS, B.2 MSS)
# ---------------------------------------------------------------------------

def kl_normal(mu, logvar):
    """KL(N(mu, sigma^2) || N(0, 1)) per unit, closed form: (B, D) = 1/2 (mu^2 + sigma^2 - 1 - log sigma^2)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)  # (B, D), >= 0

def log_density_gaussian(z, mu, logvar):
    """log N(z; mu, exp(logvar)) elementwise (broadcasting): -1/2 (log 2pi + logvar + (z - mu)^2 / var)."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar))

def log_qz_matrix(z, mu, logvar):
    """[i, j, d] = log q(z_{i,d} | x_j): every sample of the batch under every posterior.

    z (B, D) samples (or R rows of them); mu, logvar (B, D) -> (B, B, D) (or (R, B, D)).
    Written as (z - mu) / sigma and one fused multiply-add instead of
    log_density_gaussian's five passes: at B = 2048 this tensor is the estimator's cost.
    """
    t = (z.unsqueeze(1) - mu.unsqueeze(0)) * torch.exp(-0.5 * logvar).unsqueeze(0)  # (B, B, D)
    norm = (-0.5 * (LOG_2PI + logvar)).unsqueeze(0)                                  # (1, B, D)
    return torch.addcmul(norm, t, t, value=-0.5)                                     # (B, B, D)

# A pitfall of MSS (eq. S6): the weight w_ij multiplies the JOINT density q(z_i|n_j) =
# prod_d q(z_id|n_j), so log w_ij enters log q(z_i) ONCE (and each marginal log q(z_id)
# once per dimension). Adding log w_ij once per dimension inside the joint shifts log q(z),
# hence TC, by (D - 1) log w. And the authors' `_log_importance_weight_matrix` writes
# `W.view(-1)[::M+1] = 1/N` meaning the diagonal, but with B = M + 1 rows that stride is B,
# so it fills column 0: enumerating every batch (N = 6, B = 3), E[estimate] / q(z) is 1, 2,
# 3 for its rows 0, 1, 2 and 1 for every row of ours (tests/test_btcvae.py).
def mss_log_weights(batch_size, dataset_size):
    """log w_ij of eq. S6 for a batch of B = M + 1 samples (supp. B.2), (B, B) float64, rows sum to 1.

    Row i estimates q(z_i), z_i ~ q(z|n_i), from n* = n_i and the M = B - 1 others:
        1/N          for j = i (the sample's own posterior, n*),
        (N - M)/(NM) for ONE other j (the "n_M" that only the stratum n* not in the batch
                     uses; eq. S6 allows any one of the M others, here (i + 1) mod B),
        1/M          for the other M - 1 samples.
    Sum: 1/N + (N - M)/(NM) + (M - 1)/M = 1, and the estimate is unbiased for q(z_i) (S6).
    """
    n, b = int(dataset_size), int(batch_size)
    if b < 2:
        raise ValueError(f"MSS needs a batch of at least 2 samples (eq. S6 uses the other M = B - 1), got {b}.")
    if n < b:
        raise ValueError(f"dataset_size {n} is smaller than the batch size {b}; pass the training set size N.")
    # BEGIN SOLUTION: eq. S6 weights, return the (B, B) float64 matrix log w_ij
    m = b - 1
    w = torch.full((b, b), 1.0 / m, dtype=torch.float64)  # (B, B)
    i = torch.arange(b)                                   # (B,)
    w[i, i] = 1.0 / n
    w[i, (i + 1) % b] = (n - m) / (n * m)
    return w.log()                                        # (B, B); cast by the caller
    # END SOLUTION

# MWS (eq. S4) is a loose lower bound whose VALUES are off by constants: log (1/(N M)) sum_j
# q(z_i|n_j) = log (1/B) sum_j q(z_i|n_j) - log N, so its mi, tc, dwkl are the eq. 3 terms of
# the batch taken as the whole data set plus log N, (D - 1) log N and -D log N; its gradients
# are what training needs. The MI, TC and dimension-wise KL to report are metrics.json's.
def log_qz_mws(mat, dataset_size):
    """eq. S4 (supp. B.1) for rows of the batch: M = B, the batch including n_i itself.

    mat (R, B, D): [i, j, d] = log q(z_id | x_j), rows of `log_qz_matrix`; dataset_size N.
    Returns (log q(z_i) (R,), log q(z_id) (R, D)):
        log q(z_i)  = logsumexp_j sum_d mat[i, j, d] - log(N M)
        log q(z_id) = logsumexp_j mat[i, j, d] - log(N M)   (footnote 2: the same estimator
                                                            for each marginal q(z_d))
    """
    # BEGIN SOLUTION: eq. S4, return (log q(z_i) (R,), log q(z_id) (R, D))
    log_nm = math.log(int(dataset_size) * mat.shape[1])      # log(N M), M = B
    return torch.logsumexp(mat.sum(dim=2), dim=1) - log_nm, torch.logsumexp(mat, dim=1) - log_nm
    # END SOLUTION

def log_qz_mss(mat, log_w):
    """eq. S6 (supp. B.2) for rows of the batch, with weights from `mss_log_weights`.

    mat (R, B, D) as in `log_qz_mws`; log_w (R, B): the rows of log w_ij for the same i.
    Returns (log q(z_i) (R,), log q(z_id) (R, D)):
        log q(z_i)  = logsumexp_j [log w_ij + sum_d mat[i, j, d]]: w_ij multiplies the JOINT
                      density prod_d q(z_id|x_j), so log w_ij enters ONCE;
        log q(z_id) = logsumexp_j [log w_ij + mat[i, j, d]]: the same weights on each marginal.
    """
    # BEGIN SOLUTION: eq. S6 estimator, return (log q(z_i) (R,), log q(z_id) (R, D))
    return torch.logsumexp(log_w + mat.sum(dim=2), dim=1), torch.logsumexp(log_w.unsqueeze(2) + mat, dim=1)
    # END SOLUTION

_CPU_BLOCK_ELEMENTS = 1 << 20  # elements of one (rows, B, D) block of log_qz_matrix on a CPU

def decompose_kl(z, mu, logvar, dataset_size, estimator="mws"):
    """eq. 3 per sample of the batch, log q(z) and log q(z_d) estimated from the batch.

    z (B, D) with z_i ~ q(z|x_i); mu, logvar (B, D); dataset_size N (the training set).
    estimator: "mws" = eq. S4 (`log_qz_mws`, M = B), "mss" = eq. S6 (`log_qz_mss` with
    `mss_log_weights`, M = B - 1): each gives log q(z_i) (B,) and log q(z_id) (B, D).
    Returns per-sample (B,) tensors: mi = log q(z|x) - log q(z), tc = log q(z) - sum_d log
    q(z_d), dwkl = sum_d log q(z_d) - log p(z), log_qz_x, log_qz, log_prod_qzd, log_pz.
    Whatever the estimator, mi + tc + dwkl = log q(z|x) - log p(z) (the one-sample KL) exactly.
    """
    b = z.shape[0]
    n = int(dataset_size)
    if n < b:
        raise ValueError(f"dataset_size {n} is smaller than the batch size {b}; pass the training set size N.")
    if estimator not in ("mws", "mss"):
        raise ValueError(f"estimator must be 'mws' or 'mss', got {estimator!r}.")
    log_w = mss_log_weights(b, n).to(z) if estimator == "mss" else None     # (B, B)
    # Row i of the (B, B, D) matrix gives log q(z_i) and log q(z_id) alone: on a CPU, ~4 MB
    # row blocks stay in cache (the whole 168 MB at B = 2048, D = 10 would stream through
    # memory ~25 times, forward and backward): 3x faster. A GPU gets one block.
    rows = b if z.device.type != "cpu" else max(1, _CPU_BLOCK_ELEMENTS // (b * z.shape[1]))
    log_qz, log_qzd = [], []
    for i0 in range(0, b, rows):
        mat = log_qz_matrix(z[i0:i0 + rows], mu, logvar)                     # (R, B, D) rows i0.. of [i, j, d]
        if estimator == "mws":
            block = log_qz_mws(mat, n)
        else:
            block = log_qz_mss(mat, log_w[i0:i0 + rows])
        log_qz.append(block[0])                                              # (R,)
        log_qzd.append(block[1])                                             # (R, D)
    log_qz, log_qzd = torch.cat(log_qz), torch.cat(log_qzd)                  # (B,), (B, D)
    # BEGIN SOLUTION: eq. 3, return dict(mi, tc, dwkl, log_qz_x, log_qz, log_prod_qzd, log_pz)
    log_qz_x = log_density_gaussian(z, mu, logvar).sum(dim=1)                # (B,) log q(z_i|x_i)
    log_pz = log_density_gaussian(z, torch.zeros_like(z), torch.zeros_like(z)).sum(dim=1)  # (B,) log N(z_i; 0, I)
    log_prod_qzd = log_qzd.sum(dim=1)                                        # (B,) log prod_d q(z_id)
    return dict(
        mi=log_qz_x - log_qz,              # eq. 3 (i): index-code MI, KL(q(z,n)||q(z)p(n))
        tc=log_qz - log_prod_qzd,          # eq. 3 (ii): total correlation, KL(q(z)||prod_d q(z_d))
        dwkl=log_prod_qzd - log_pz,        # eq. 3 (iii): dimension-wise KL, sum_d KL(q(z_d)||p(z_d))
        log_qz_x=log_qz_x, log_qz=log_qz, log_prod_qzd=log_prod_qzd, log_pz=log_pz,
    )
    # END SOLUTION

def btcvae_loss(x, x_logits, z, mu, logvar, dataset_size, alpha=1.0, beta=6.0, gamma=1.0,
                estimator="mws"):
    """The loss to minimise (the negative of eq. 5's objective) and its terms.

    x (B, C, H, W) in [0, 1]; x_logits (B, C, H, W); z, mu, logvar (B, D), z the sample the
    decoder saw (supp. B.2.1: the batch that sampled z also estimates log q(z)); dataset_size
    N of the training set; alpha, beta, gamma: eq. 5's weights (all 1: eq. 1; all B: eq. 2);
    estimator: "mws" (supp. B.1, the paper's), "mss" (supp. B.2), or None, only when alpha =
    beta = gamma: eq. 2 needs no log q(z) and mi/tc/dwkl are NaN (a plain beta-VAE step).
    Returns a dict of 0-dim tensors (no host sync): loss; recon = -(1/B) sum_i log p(x_i|z_i),
    summed over pixels; mi, tc, dwkl, the batch means of `decompose_kl`'s terms; kl, the
    closed-form KL(q(z|x)||p(z)) averaged over the batch, and kl_units (D,) per unit.
    """
    if estimator is None and not alpha == beta == gamma:
        raise ValueError("estimator=None drops log q(z), which only cancels when alpha = beta = gamma (eq. 2).")
    # BEGIN SOLUTION: eq. 5, return dict(loss, recon, mi, tc, dwkl, kl, kl_units)
    batch = x.shape[0]
    # -E_q[log p(x|z)] with Bernoulli p: cross-entropy summed over pixels and channels,
    # averaged over the batch (eq. 5's first term, negated).
    # DEVIATION: BCE on the decoder's logits (the paper: sigmoid mean + Bernoulli): the same
    # value, numerically stable.
    recon = F.binary_cross_entropy_with_logits(x_logits, x, reduction="sum") / batch  # eq. 5, 1st term, negated
    kl_units = kl_normal(mu, logvar).mean(dim=0)                 # (D,) closed form, for logging
    if estimator is None:
        # NOTE: eq. 2 with the one-sample KL estimate log q(z|x) - log p(z) = mi + tc + dwkl, as
        # the authors' code does, so eq. 2 is exactly eq. 5 with alpha = beta = gamma = B.
        one_sample_kl = (log_density_gaussian(z, mu, logvar) - log_density_gaussian(
            z, torch.zeros_like(z), torch.zeros_like(z))).sum(dim=1)  # (B,) log q(z|x) - log p(z)
        nan = recon.new_tensor(float("nan"))
        # eq. 2: recon + B * KL(q(z|x)||p(z)), the KL estimated with the sample z.
        return dict(loss=recon + beta * one_sample_kl.mean(), recon=recon, mi=nan, tc=nan, dwkl=nan,
                    kl=kl_units.sum(), kl_units=kl_units)
    terms = decompose_kl(z, mu, logvar, dataset_size, estimator)
    mi, tc, dwkl = terms["mi"].mean(), terms["tc"].mean(), terms["dwkl"].mean()  # batch means
    # eq. 5, negated: recon + alpha * I_q(z; n) + beta * KL(q(z)||prod_j q(z_j))
    #                 + gamma * sum_j KL(q(z_j)||p(z_j))
    loss = recon + alpha * mi + beta * tc + gamma * dwkl
    return dict(loss=loss, recon=recon, mi=mi, tc=tc, dwkl=dwkl, kl=kl_units.sum(), kl_units=kl_units)
    # END SOLUTION

# ---------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------

def train(model, optimizer, scaler, ds, cfg, step, total, log, device):
    """Minimise eq. 5 (or eq. 1 / eq. 2) from update `step` to `total` (or until `log` says
    stop); returns the step reached. N of eq. S4 / S6 is the training set's size."""
    # DEVIATION: batches are slices of a per-epoch permutation, as in the authors' DataLoader;
    # eq. S3 assumes the batch's other indices i.i.d. from p(n) (negligible for B << N).
    batches = data.batches(ds, cfg["batch_size"], seed=cfg["seed"], start_step=step)  # a function of (seed, step)
    model.train()
    while step < total:
        _, x = next(batches)                                  # (B, C, H, W) in [0, 1]
        x = x.to(device, non_blocking=True)
        step += 1
        out = model(x)
        terms = btcvae_loss(x, out["x_logits"], out["z"], out["mu"], out["logvar"], len(ds),
                            cfg["alpha"], cfg["beta"], cfg["gamma"], cfg["estimator"])
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(terms["loss"]).backward()                # fp16: loss scaled so small gradients survive
        scaler.step(optimizer)                                # fp32, bf16: plain optimizer.step()
        scaler.update()
        mean = {k: terms[k] for k in LOGGED}
        mean["kl_z"] = terms["kl_units"]
        if log.update(step, model, optimizer, mean):
            break
    return step


LOGGED = ("loss", "recon", "mi", "tc", "dwkl", "kl")  # btcvae_loss's terms in log.csv, then kl_z<j>


def log_columns(cfg):
    return [*LOGGED] + [f"kl_z{j}" for j in range(cfg["cont"])]


# ---------------------------------------------------------------------------
# Evaluation: eq. 3 over the whole data set, metrics and figures
# ---------------------------------------------------------------------------

def log_aggregate_posterior(z, mu, logvar, query_chunk=32, chunk=512):
    """Exact log q(z) and log q(z_d) of the aggregate posterior q(z) = (1/N) sum_n q(z|n).

    z (Q, D) query points; mu, logvar (N, D) ALL N posteriors (no minibatch estimate).
    Returns, in float64,
        log_qz  (Q,)   = logsumexp_n sum_d log q(z_d|n) - log N
        log_qzd (Q, D) = logsumexp_n log q(z_d|n) - log N.
    The N components are taken `chunk` at a time and the chunks' logsumexps combined with
    logaddexp, so memory stays at query_chunk x chunk x D. This is the definition; the
    evaluation runs `log_aggregate_posterior_fast`, the same sums organised for a CPU.
    """
    q, d = z.shape
    log_qz = torch.full((q,), -math.inf, dtype=torch.float64)                # (Q,)
    log_qzd = torch.full((q, d), -math.inf, dtype=torch.float64)             # (Q, D)
    for i in range(0, q, query_chunk):
        zi = z[i:i + query_chunk].unsqueeze(1)                               # (Qc, 1, D)
        for n0 in range(0, mu.shape[0], chunk):
            lq = log_density_gaussian(zi, mu[n0:n0 + chunk], logvar[n0:n0 + chunk])  # (Qc, Nc, D) log q(z_d|n)
            log_qz[i:i + query_chunk] = torch.logaddexp(log_qz[i:i + query_chunk],
                                                        torch.logsumexp(lq.sum(dim=2), dim=1).double())
            log_qzd[i:i + query_chunk] = torch.logaddexp(log_qzd[i:i + query_chunk],
                                                         torch.logsumexp(lq, dim=1).double())
    log_n = math.log(mu.shape[0])
    return log_qz - log_n, log_qzd - log_n


# The fast form of the same two sums. exp(a) = 2^(a log2 e): torch's exp2 is ~3x faster than
# exp on CPUs. 2^x below x = -125 is a float32 subnormal; clamping there adds at most N * 2^-125
# to a sum that is kept only above e^-50 (else the row is recomputed exactly).
LOG2_E = 1.0 / math.log(2.0)
_EXP2_FLOOR, _FALLBACK_LOG_SUM = -125.0, -50.0


def log_aggregate_posterior_fast(z, mu, logvar, query_chunk=64, component_chunk=512, progress=None):
    """`log_aggregate_posterior` as a cache-blocked CPU kernel (tests/test_btcvae.py checks
    that they agree; benchmarks/aggregate_posterior.py times both: ~7-10x faster).

    Blocks of (D, query_chunk, component_chunk) float32 stay in cache; each element costs two
    fused multiply-adds, a clamp and one exp2; the joint exponent is the sum over d of the
    per-dimension exponents already in the block. Every exponent is shifted by its upper
    bound max_n -1/2 (log 2pi + logvar_nd), so no max pass is needed and nothing overflows.
    progress(n) is called after each block of n query points.
    """
    z = z.detach().float()                                        # (Q, D)
    mu, logvar = mu.detach().float(), logvar.detach().float()     # (N, D)
    q, d = z.shape
    n = mu.shape[0]
    inv_sd = torch.exp(-0.5 * logvar)                             # (N, D)
    peak = -0.5 * (LOG_2PI + logvar)                              # (N, D) log q(mu_nd | n), the density's maximum
    shift = peak.max(dim=0).values                                # (D,) >= every log q(z_d | n)
    inv_sd_t = inv_sd.t().contiguous()                            # (D, N)
    neg_b_t = (-mu * inv_sd).t().contiguous()                     # (D, N)  -mu / sigma
    c_t = ((peak - shift) * LOG2_E).t().contiguous()              # (D, N)  <= 0, in bits
    sums_d = torch.zeros(q, d, dtype=torch.float64)               # (Q, D) sum_n exp(log q(z_d|n) - shift_d)
    sums = torch.zeros(q, dtype=torch.float64)                    # (Q,)   sum_n exp(log q(z|n) - sum_d shift_d)
    block = torch.empty(d, query_chunk, component_chunk)          # (D, Qc, Nc) reused buffer
    joint = torch.empty(query_chunk, component_chunk)             # (Qc, Nc)
    for q0 in range(0, q, query_chunk):
        qc = min(query_chunk, q - q0)
        zq = z[q0:q0 + qc].t().contiguous().unsqueeze(2)          # (D, Qc, 1)
        for n0 in range(0, n, component_chunk):
            n1 = min(n0 + component_chunk, n)
            a = block[:, :qc, :n1 - n0]                           # (D, Qc, Nc)
            j = joint[:qc, :n1 - n0]                              # (Qc, Nc)
            # t = (z - mu) / sigma, then (log q(z_d|n) - shift_d) * log2 e = c - t^2 log2(e) / 2
            torch.addcmul(neg_b_t[:, None, n0:n1], zq, inv_sd_t[:, None, n0:n1], out=a)
            torch.addcmul(c_t[:, None, n0:n1], a, a, value=-0.5 * LOG2_E, out=a)
            torch.sum(a, dim=0, out=j)                            # joint exponent: sum over d
            a.clamp_min_(_EXP2_FLOOR).exp2_()                     # q(z_d|n) / e^shift_d
            sums_d[q0:q0 + qc] += a.sum(dim=2).t().double()
            j.clamp_min_(_EXP2_FLOOR).exp2_()                     # q(z|n) / e^(sum_d shift_d)
            sums[q0:q0 + qc] += j.sum(dim=1).double()
        if progress is not None:
            progress(qc)
    log_n = math.log(n)
    log_qzd = shift.double() + sums_d.log() - log_n               # (Q, D)
    log_qz = shift.double().sum() + sums.log() - log_n            # (Q,)
    bad = ~(sums_d.log() > _FALLBACK_LOG_SUM).all(dim=1) | ~(sums.log() > _FALLBACK_LOG_SUM)  # (Q,)
    for i in torch.nonzero(bad).flatten().tolist():               # far below the bound: exactly, in float64
        exact = log_aggregate_posterior(z[i:i + 1].double(), mu.double(), logvar.double())
        log_qz[i], log_qzd[i] = exact[0][0], exact[1][0]
    return log_qz, log_qzd


def _mean_se(v):
    """Mean of per-sample values v (Q,) and its standard error std / sqrt(Q)."""
    return float(v.mean()), float(v.std() / math.sqrt(len(v))) if len(v) > 1 else float("nan")

def elbo_decomposition(mu, logvar, n_samples=10000, seed=0, progress=False):
    """eq. 3 over a whole data set: E_p(n) KL(q(z|n)||p(z)) = MI + TC + dimension-wise KL.

    mu, logvar (N, D): the posteriors of all N training images; q(z) is their exact
    mixture. Q = min(n_samples, N) distinct indices n_s are drawn uniformly (stratified
    over p(n), as supp. A.1 does for H(z_j); the authors' elbo_decomposition.py scores
    10,000 samples), one z_s ~ q(z|n_s) each, and every term is averaged per sample:
        mi   = E[log q(z|n) - log q(z)]               <= log N,
        tc   = E[log q(z) - sum_d log q(z_d)]         >= 0 (in expectation),
        dwkl = E[sum_d log q(z_d) - log p(z)]         >= 0 (in expectation),
    with log q(z), log q(z_d) exact (log_aggregate_posterior). The estimate is unbiased;
    its only error is Monte Carlo, reported as the standard error (std / sqrt(Q)) of
    each term. mi + tc + dwkl = kl_mc = E[log q(z|n) - log p(z)] per sample, which must
    agree with the closed-form average KL over all N (kl_analytic) within a few kl_mc_se.
    Returns a dict of floats and "samples": the per-sample tensors (rows into mu, z, ...).
    """
    mu, logvar = mu.detach().float(), logvar.detach().float()
    n, d = mu.shape
    q = min(int(n_samples), n)
    if q < 1:
        raise ValueError("the decomposition needs at least one sample; pass n_samples >= 1.")
    g = torch.Generator().manual_seed(int(seed))
    rows = torch.randperm(n, generator=g)[:q]                             # (Q,) distinct n_s
    eps = torch.randn(q, d, generator=g)                                  # (Q, D)
    z = mu[rows] + torch.exp(0.5 * logvar[rows]) * eps                    # (Q, D) z_s ~ q(z|n_s)
    t0 = time.perf_counter()
    bar = runs.progress(q, 0, not progress)
    log_qz, log_qzd = log_aggregate_posterior_fast(z, mu, logvar, progress=bar.update)  # (Q,), (Q, D)
    bar.close()
    zd = z.double()
    log_qz_x = log_density_gaussian(zd, mu[rows].double(), logvar[rows].double()).sum(dim=1)   # (Q,)
    log_pzd = log_density_gaussian(zd, torch.zeros_like(zd), torch.zeros_like(zd))            # (Q, D)
    # DEVIATION: every term is scored per sample with the same z, so their sum is a Monte Carlo
    # estimate of the average KL (checked against the closed form: kl_gap_in_se); the authors'
    # elbo_decomposition.py takes E[log q(z|x)] and E[log p(z)] in closed form.
    per = dict(mi=log_qz_x - log_qz,                                      # (Q,) eq. 3 (i)
               tc=log_qz - log_qzd.sum(dim=1),                            # (Q,) eq. 3 (ii)
               dwkl=log_qzd.sum(dim=1) - log_pzd.sum(dim=1))              # (Q,) eq. 3 (iii)
    per["kl"] = log_qz_x - log_pzd.sum(dim=1)                             # (Q,) = mi + tc + dwkl
    res = dict(n_data=n, n_samples=q, log_n=math.log(n))
    for key, v in per.items():
        name = "kl_mc" if key == "kl" else key
        res[name], res[name + "_se"] = _mean_se(v)
    res["kl_analytic"] = float(kl_normal(mu.double(), logvar.double()).sum(dim=1).mean())  # over all N
    res["dwkl_per_unit"] = [float(v) for v in (log_qzd - log_pzd).mean(dim=0)]          # (D,)
    res["seconds"] = round(time.perf_counter() - t0, 2)
    res["samples"] = dict(rows=rows, z=z, log_qz_x=log_qz_x, log_pz=log_pzd.sum(dim=1), **per)
    return res

def encode_dataset(model, ds, indices, device, batch_size=512):
    """Posterior parameters of every indexed image: mu, logvar (N, D)."""
    model.eval()
    return scoring.encode_batches(model.encode, ds, indices, device, batch_size)  # (N, D), (N, D)


@torch.no_grad()
def evaluate(model, cfg, device, step, out=None, log_path=None):
    """Encode the evaluation split (or --eval-samples of it), decompose eq. 3 over the
    training set (or the same-sized subset of it), and write metrics.json and the figures
    into `out`. NOTE: the codes are posterior means (MIG, FactorVAE score, figures).
    out=None (--eval-every): the metrics only, returned, nothing written.
    """
    t0 = time.perf_counter()
    ds = data.load_for(cfg, cfg["eval_split"])
    indices = scoring.eval_indices(len(ds), cfg["eval_samples"], cfg["seed"])  # (N,)
    mu, logvar = encode_dataset(model, ds, indices, device, cfg["eval_batch_size"])
    reasons, kl_units = {}, metrics.kl_per_unit(mu, logvar)        # kl_units (D,) nats
    res = dict(method="btcvae", objective=objective_name(cfg), estimator=cfg["estimator"],
               dataset=cfg["dataset"], eval_split=cfg["eval_split"], n_eval=len(indices), step=step,
               kl_per_unit=[float(v) for v in kl_units], kl_total=float(np.sum(kl_units)),
               active_units=int(np.sum(kl_units >= metrics.PRUNE_THRESHOLD)))
    # nats per image, summed over pixels, z = posterior mean (eval mode)
    res["recon_eval"] = float(scoring.bernoulli_nll(lambda x, i: model(x)["x_logits"], ds, indices[:2048], device,
                                                    cfg["eval_batch_size"]).mean())

    def encode(idx):  # FactorVAE vote images, in large no-grad batches
        return encode_dataset(model, ds, idx, device, 4 * cfg["eval_batch_size"])[0], None

    scores, mig_all = scoring.factor_scores(ds, indices, mu, logvar, kl_units, encode, cfg["metric_votes"],
                                            cfg["seed"], reasons)
    res.update(scores, decomposition=None)
    if cfg["decomp_samples"] > 0:
        res["decomposition"] = _decompose(model, cfg, device, ds, indices, mu, logvar)
    else:
        reasons["decomposition"] = "skipped with --decomp-samples 0"
    res.update(null_reasons=reasons, eval_seconds=round(time.perf_counter() - t0, 2))
    if out is None:                                           # --eval-every: the metrics only
        return res
    save_figures(model, cfg, ds, indices, mu, kl_units, device, out, log_path, res["decomposition"])
    viz.save_factor_figures(out, mig_all, mu, ds, indices, data.SHAPE_NAMES if scoring.is_dsprites_grid(ds) else None)
    runs.write_json(os.path.join(out, "metrics.json"), res)
    return res

def _decompose(model, cfg, device, eval_ds, eval_indices, mu, logvar):
    """eq. 3 over the training set (p(n) uniform over it), plus E[log p(x|z)] and the ELBO (eq. 1).
    NOTE: with --eval-samples n it runs over that random subset of the training set (q(z) is
    its aggregate posterior, MI <= log n; metrics.json records n_data)."""
    if cfg["train_split"] == cfg["eval_split"]:
        ds, indices = eval_ds, eval_indices                  # the same images: reuse the codes
    else:
        ds = data.load_for(cfg, cfg["train_split"])
        g = torch.Generator().manual_seed(cfg["seed"] + 2)
        n = len(ds) if cfg["eval_samples"] is None else min(cfg["eval_samples"], len(ds))
        indices = torch.randperm(len(ds), generator=g)[:n] if n < len(ds) else torch.arange(len(ds))
        mu, logvar = encode_dataset(model, ds, indices, device, cfg["eval_batch_size"])
    print(f"full-data decomposition: {min(cfg['decomp_samples'], len(indices))} samples of z against "
          f"all {len(indices)} posteriors")
    res = elbo_decomposition(mu, logvar, cfg["decomp_samples"], seed=cfg["seed"],
                             progress=not cfg["no_progress"])
    s = res.pop("samples")
    # E_q[log p(x|z)] with the decomposition's own samples z_s ~ q(z|x_s), one per image.
    model.eval()
    log_px = -scoring.bernoulli_nll(lambda x, i: model.decode(s["z"][i:i + len(x)].to(device)), ds,
                                    indices[s["rows"]], device, cfg["eval_batch_size"])  # (Q,)
    res["split"] = cfg["train_split"]
    res["log_px"], res["log_px_se"] = _mean_se(log_px)
    res["elbo"] = res["log_px"] - res["kl_analytic"]                 # eq. 1 with the closed-form KL
    res["elbo_mc"], res["elbo_mc_se"] = _mean_se(log_px - s["kl"])   # the one-sample ELBO per image
    res["kl_gap_in_se"] = (res["kl_mc"] - res["kl_analytic"]) / res["kl_mc_se"] if res["kl_mc_se"] > 0 else 0.0
    return res

def save_figures(model, cfg, ds, indices, mu, kl_units, device, out, log_path=None, decomposition=None):
    """Reconstructions, prior samples, traversals of the informative units over (-2, 2) ranked
    by KL (Fig. 6; also as traversals.gif) and the training curves of the eq. 3 terms, with
    the full-data values as dashed lines (the MI matrix behind MIG and supp. D's Fig. S4:
    viz.save_factor_figures)."""
    model.eval()
    decode = lambda latent: torch.sigmoid(model.decode(latent.to(device))).cpu()  # noqa: E731
    x = ds.batch(indices[:8]).to(device)                                            # (8, C, H, W)
    viz.save_reconstructions(x, torch.sigmoid(model(x)["x_logits"]), os.path.join(out, "reconstructions.png"),
                             title="top: data, bottom: reconstruction (z = mean)")
    d, n_cols = cfg["cont"], 10
    g = torch.Generator().manual_seed(cfg["seed"])
    z = torch.randn(4, n_cols, d, generator=g)                                      # (4, cols, D) ~ p(z)
    viz.save_traversal(decode, z, os.path.join(out, "samples.png"), title="decoder means of z ~ N(0, I)")
    # Fig. 6: one unit at a time over (-2, 2), the others at the prior mean; rows ranked by KL,
    # only the informative units (KL > 0.1 nats, at least one): a dead unit's row is blank.
    values = torch.linspace(-2.0, 2.0, n_cols)                                      # (cols,)
    units, n_inactive = viz.informative_units(kl_units, metrics.PRUNE_THRESHOLD)
    rows, labels = viz.unit_traversals(values, kl_units, units=units)               # (R, cols, D)
    note = viz.inactive_note(n_inactive, metrics.PRUNE_THRESHOLD)
    viz.save_traversal(decode, rows, os.path.join(out, "traversals.png"), row_labels=labels,
                       col_labels=viz.value_labels(values),
                       title=f"z_j from -2 to 2 in {n_cols} steps, others 0; rows ranked by KL (Fig. 6)"
                             + (f"; {note}" if note else ""))
    viz.save_traversal_gif(decode, rows[:10], os.path.join(out, "traversals.gif"), values, labels[:10])
    log = viz.save_log_figures(log_path, out, "KL per unit during training")
    if log is not None:
        # eq. S4 = log (1/B) sum_j q(z_i|n_j) - log N: MWS is the batch's own decomposition
        # (the batch as the whole data set) plus the constants log N, (D-1) log N, -D log N,
        # which would flatten the plot; MSS (eq. S6) needs no such shift.
        ln = math.log(cfg["train_size"]) if cfg["estimator"] == "mws" and cfg.get("train_size") else 0.0
        curves = {"index-code MI": log["mi"] - ln, "total correlation": log["tc"] - (d - 1) * ln,
                  "dimension-wise KL": log["dwkl"] + d * ln, "KL (closed form)": log["kl"]}
        hl = {f"full data: {name} {decomposition[key]:.2f}": decomposition[key]
              for name, key in (("MI", "mi"), ("TC", "tc"), ("dwKL", "dwkl"))} if decomposition else None
        shifted = " minus log N, (D-1) log N, -D log N" if ln else ""
        viz.plot_curves(curves, os.path.join(out, "decomposition_during_training.png"), x=log["step"],
                        ylabel="nats, batch mean", hlines=hl,
                        title=f"eq. 3 terms, {cfg['estimator'].upper()} batch estimates{shifted}")

def load_for_evaluation(cfg, device):
    """--eval-only / --pretrained: the checkpoint's model and step; the architecture and the
    objective come from the run that wrote it."""
    path = runs.checkpoint_path(cfg["checkpoint"])
    ckpt = runs.load_checkpoint(path, "btcvae")
    for key in TRAINED_WITH:                                  # the settings the weights were trained with
        cfg[key] = ckpt["config"].get(key, cfg.get(key))
    model = BetaTCVAE(data.image_size_for(cfg), cfg["cont"], cfg["arch"])
    runs.load_state_dict(model, ckpt["model"], path)
    return nets.place(model, device), int(ckpt["step"])


# ---------------------------------------------------------------------------
# Presets and arguments
# ---------------------------------------------------------------------------

# Chen et al. (2018), supp. H: "Adam with learning rate 0.001; batch size 2048 for dSprites,
# 3D faces and 3D chairs; 1000 for CelebA"; Fig. 3: beta = 6 (4 for the beta-VAE baseline).
# The paper prints no latent size or training length: the authors' vae_quant.py defaults.
# DEVIATION: the training length counts updates, epochs * floor(N / B) of them (the authors'
# DataLoader keeps the partial last batch; on dSprites 737,280 / 2048 = 360 exactly).
# The authors' `--lambda-anneal` and `--beta-anneal`, which the paper does not describe, are
# not offered.
ALL = dict(lr=1e-3,                    # supp. H: Adam, learning rate 0.001
           epochs=50,                    # vae_quant.py default --num-epochs 50 (dSprites: 18,000 updates)
           alpha=1.0, gamma=1.0,         # sec. 3.2.1: alpha = gamma = 1, only beta tuned
           estimator="mws")              # sec. 3.2 / supp. B.1 (MSS "performs similarly", Fig. S1)
PRESETS = {
    "shapes": dict(ALL,                    # dSprites protocol (sec. 6.1)
        cont=10,                           # D = 10: vae_quant.py default --latent-dim 10
        batch_size=2048, beta=6.0,         # supp. H: batch 2048 (dSprites); Fig. 3: beta = 6
        arch="mlp"),                       # supp. H.1: the dSprites MLP (`--arch conv`: nets.py's conv net)
    "faces": dict(ALL,                     # 3D faces (a folder of 64x64 grey renders)
        cont=10, batch_size=2048,          # supp. H: batch 2048 (3D faces); D: vae_quant.py default
        beta=6.0, arch="conv"),            # Fig. 3 (faces): beta = 6; supp. H.2 Fig. S15 too
    "chairs": dict(ALL,                    # 3D chairs (a folder of 64x64 images), Fig. 6
        cont=10, batch_size=2048,          # supp. H: batch 2048 (3D chairs); D: vae_quant.py default
        beta=6.0, arch="conv"),            # ours: the paper gives no beta for Fig. 6; Fig. 3's 6
    "celeba": dict(ALL,                    # CelebA (a folder of 64x64 RGB images), Fig. 7
        cont=32,                           # ours: Fig. 7 finds "more than 10" attributes, so D > 10 (Dupont C.4: 32)
        batch_size=1000,                   # supp. H: batch 1000 (CelebA)
        beta=15.0, arch="conv"),           # supp. I.2: "beta-TCVAE model one (beta = 15)"
    "mnist": dict(ALL,                     # ours: the paper has no MNIST experiment
        cont=10, batch_size=64,            # the dSprites D; Dupont App. C.1's batch for this network
        beta=6.0, arch="conv"),            # Fig. 3's beta = 6
}
PRESETS["dsprites"] = dict(PRESETS["shapes"])       # DeepMind's file: the same protocol
PRESETS["fashion-mnist"] = dict(PRESETS["mnist"])   # ours, as for MNIST

# The decomposition of eq. 3 is over the training set (p(n) is its empirical distribution);
# MNIST-like sets report the other metrics on test data, the factor grids are one set.
DATA_SOURCES = data.sources("mnist", "fashion-mnist", "dsprites", "shapes", "faces", "chairs", "celeba")

DEFAULTS = dict(
    dataset="shapes", cont=10, arch="conv", estimator="mws", alpha=1.0, beta=6.0, gamma=1.0, beta_vae=None,
    lr=1e-3, batch_size=2048, epochs=50, iterations=None, save_every=1000, decomp_samples=10000,
    **runs.RUN_DEFAULTS,
)
PRESET_SOURCES = {"lr": "supp. H", "batch_size": "supp. H", "alpha": "sec. 3.2.1", "gamma": "sec. 3.2.1",
                  "beta": "Fig. 3 (CelebA: supp. I.2)", "estimator": "supp. B.1", "arch": "supp. H.1",
                  "cont": "authors' vae_quant.py default", "epochs": "authors' vae_quant.py default"}
# The settings of a trained model that --eval-only takes from its checkpoint.
TRAINED_WITH = ("cont", "arch", "alpha", "beta", "gamma", "beta_vae", "estimator", "lr", "batch_size", "epochs",
                "iterations", "train_split", "train_size")


def build_parser(dataset="shapes"):
    p = runs.parser("btcvae.py", "beta-TCVAE (Chen et al. 2018): train or evaluate. Defaults shown are the "
                    f"preset for --dataset {dataset} (supp. H where the paper gives them); flags override.")
    p.add_argument("--dataset", choices=sorted(DATA_SOURCES), help="selects data and preset (default shapes)")
    p.add_argument("--cont", type=int, help="number of latent units D")
    p.add_argument("--arch", choices=["conv", "mlp"], help="conv: the shared nets.py network; mlp: supp. H.1")
    p.add_argument("--estimator", choices=["mws", "mss"], help="log q(z) from the batch: supp. B.1 (mws) or B.2 (mss)")
    p.add_argument("--alpha", type=float, help="weight of the index-code MI in eq. 5")
    p.add_argument("--beta", type=float, help="weight of the total correlation in eq. 5")
    p.add_argument("--gamma", type=float, help="weight of the dimension-wise KL in eq. 5")
    p.add_argument("--beta-vae", type=float, metavar="B", help="baseline: beta-VAE eq. 2 = eq. 5 with alpha = beta = gamma = B")
    p.add_argument("--lr", type=float, help="Adam learning rate")
    p.add_argument("--batch-size", type=int, help="images per update")
    p.add_argument("--epochs", type=float, help="training length in epochs")
    p.add_argument("--iterations", type=int, help="training length in updates (overrides --epochs)")
    p.add_argument("--decomp-samples", type=int, help="z samples of the full-data decomposition, each scored "
                                                      "against all N posteriors (0 skips it)")
    runs.add_run_flags(p, "btcvae", "data folder (torchvision layout), or the image folder for faces/chairs/celeba")
    if dataset in PRESETS:  # --help shows this data set's preset value of each flag and its source
        runs.show_defaults(p, DEFAULTS, PRESETS[dataset],
                           {k: PRESET_SOURCES.get(k, "ours (see PRESETS)") for k in PRESETS[dataset]})
    return p

def make_config(argv=None):
    """DEFAULTS <- PRESETS[dataset] <- the flags given; on --resume, the run's own config
    <- the flags that only change how it goes on. Validated before anything is written."""
    argv = sys.argv[1:] if argv is None else list(argv)
    flags = vars(build_parser(runs.dataset_of(argv, DEFAULTS["dataset"])).parse_args(argv))
    if flags.get("beta_vae") is not None and {"alpha", "beta", "gamma"} & set(flags):
        raise ValueError("--beta-vae B sets alpha = beta = gamma = B; drop "
                         + " ".join(f"--{k}" for k in ("alpha", "beta", "gamma") if k in flags) + ".")
    if "resume" in flags:
        stored = runs.stored_config(flags, "btcvae")
        cfg = runs.resumed_config(stored, flags, DEFAULTS, DATA_SOURCES, "btcvae", flags.get("force_resume", False))
    else:
        cfg = runs.new_config(flags, "btcvae", DEFAULTS, PRESETS, DATA_SOURCES)
        runs.use_pretrained(cfg, "betavae" if cfg["beta_vae"] is not None else "btcvae")
    if cfg.get("beta_vae") is not None:                       # eq. 2 = eq. 5 with alpha = beta = gamma = B
        cfg["alpha"] = cfg["beta"] = cfg["gamma"] = float(cfg["beta_vae"])
    validate_config(cfg)
    return cfg


def validate_config(cfg):
    """One ValueError sentence per bad flag combination."""
    runs.validate_run_flags(cfg, ('alpha', 'beta', 'gamma', 'beta_vae'))
    bad = next((name for name in ("alpha", "beta", "gamma") if cfg[name] < 0), None)
    runs.first_error(
        (cfg["cont"] < 1, f"--cont {cfg['cont']}: need at least one latent unit."),
        ((cfg.get("beta_vae") or 0) < 0, f"--beta-vae {cfg.get('beta_vae')} is negative; eq. 2 needs beta >= 0."),
        (bad is not None, f"--{bad} {cfg.get(bad)} is negative; eq. 5 penalises each term with a weight >= 0."),
        (cfg["estimator"] == "mss" and cfg["batch_size"] < 2,
         "--estimator mss needs --batch-size >= 2: eq. S6 weighs the other M = B - 1 samples."),
        (cfg["decomp_samples"] < 0, "--decomp-samples must be >= 0 (0 skips the full-data decomposition)."))

def objective_name(cfg):
    """Which equation of the paper the flags select (printed and saved with the run)."""
    a, b, g = cfg["alpha"], cfg["beta"], cfg["gamma"]
    if cfg.get("beta_vae") is not None or (a == b == g and a != 1.0):
        return f"eq. 2 (beta-VAE, beta = {b:g})"
    if a == b == g == 1.0:
        return "eq. 1 (ELBO, plain VAE)"
    return f"eq. 5 (beta-TCVAE, alpha = {a:g}, beta = {b:g}, gamma = {g:g})"

# ---------------------------------------------------------------------------
# main: parse, data, model, optimiser, restore, train, evaluate, save
# ---------------------------------------------------------------------------

def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    with runs.errors_as_sentences("btcvae.py"):
        cfg = make_config(argv)
        device = nets.to_device(cfg["device"])
        if cfg["eval_only"]:                                  # --eval-only / --pretrained: no training
            runs.check_eval_folder(cfg, "btcvae")
            model, step = load_for_evaluation(cfg, device)
            nets.set_precision(model, cfg["precision"], device)
            print("config (the checkpoint's own settings):\n" + runs.format_config(cfg))
            with runs.staged_evaluation(cfg, "btcvae", eval_config=cfg) as out:
                res = evaluate(model, cfg, device, step, out, log_path=runs.training_log(cfg))
            return report(res, cfg)
        print("config:\n" + runs.format_config(cfg))
        runs.check_out_dir(cfg["out"], new_run=not cfg["resume"], overwrite=cfg["overwrite"])
        ds = data.load_for(cfg, cfg["train_split"])
        total = runs.num_iterations(cfg, len(ds))
        runs.seed_everything(cfg["seed"])
        model = nets.place(BetaTCVAE(ds.image_size, cfg["cont"], cfg["arch"]), device)
        nets.set_precision(model, cfg["precision"], device)   # the networks only; every equation in fp32
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
        scaler = nets.grad_scaler(cfg["precision"], device)   # fp16's loss scaling; a no-op in fp32 and bf16
        runs.open_run_folder(cfg)                             # locked; --overwrite clears the old run now
        step, window = runs.restore(cfg, model, optimizer, "btcvae", total, scaler) if cfg["resume"] else (0, None)
        cfg = runs.save_config(cfg, iterations_total=total, objective=objective_name(cfg), train_size=len(ds))
        print(f"{cfg['objective']} with the {cfg['estimator'].upper()} estimator on {cfg['dataset']} "
              f"({len(ds)} images {ds.image_size}), {total} updates, {nets.count_parameters(model)} "
              f"parameters ({cfg['arch']}), device {device}, run folder {cfg['out']}")
        with runs.TrainLog(cfg, log_columns(cfg), step, total, device, "btcvae", window, argv,
                           nan_hint="lower --lr or --beta, or check the input data", scaler=scaler) as log:
            while True:  # training slices, with the --eval-every evaluations (metrics only) between them
                if log.eval_due(step):
                    with runs.rng_isolated():                 # the training RNG streams stay untouched
                        log.record_eval(step, evaluate(model, cfg, device, step))
                if step >= total or log.stopped:
                    break
                step = train(model, optimizer, scaler, ds, cfg, step, log.next_stop(step), log, device)
        if not log.finish() or cfg["no_eval"]:
            return None
        with runs.staged_evaluation(cfg, "btcvae") as out:
            res = evaluate(model, cfg, device, step, out, log_path=os.path.join(cfg["out"], "log.csv"))
        return report(res, cfg)


def report(res, cfg):
    """Print the results, the full-data decomposition's terms among them."""
    runs.print_summary(res)
    if res.get("decomposition"):
        runs.print_summary({f"decomp_{k}": v for k, v in res["decomposition"].items()}, cfg["out"])
    return res


if __name__ == "__main__":
    main()
