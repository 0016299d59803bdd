"""beta-TCVAE: the ELBO's KL split into index-code MI, total correlation and dimension-wise KL.

Paper: Ricky T. Q. Chen, Xuechen Li, Roger Grosse, David Duvenaud, "Isolating Sources of
Disentanglement in Variational Autoencoders", NeurIPS 2018 (text in
../shared/papers/btcvae_chen2018.txt, with the supplement). Authors' code:
https://github.com/rtqichen/beta-tcvae (read for conventions only; nothing is copied).

    python btcvae.py --dataset shapes                        # supp. H preset, beta = 6 (Fig. 3)
    python btcvae.py --dataset shapes --beta-vae 4           # the beta-VAE baseline of Fig. 3
    python btcvae.py --dataset shapes --estimator mss        # supp. B.2 instead of B.1
    python btcvae.py --eval-only --checkpoint runs/btcvae-shapes-s0 --dataset shapes

Equation -> code
    eq. 1   ELBO: recon + KL(q(z|x)||p(z)) (alpha = beta = gamma = 1) ...... btcvae_loss
    eq. 2   beta-VAE = eq. 5 with alpha = beta = gamma = B (`--beta-vae B`) .. btcvae_loss
    eq. 3   E_p(n) KL(q(z|n)||p(z)) = index-code MI + TC + dimension-wise KL
            (proof: supp. B) ............................................... decompose_kl
    eq. 5   beta-TCVAE: recon + alpha*MI + beta*TC + gamma*dwKL ........... btcvae_loss
    sec 2.1 Gaussian q(z|x), N(0, I) prior, Bernoulli p(x|z), reparameterised
            sample ........................... BetaTCVAE, reparameterize, log_density_gaussian
    eq. S3-S4 minibatch weighted sampling (MWS) of log q(z) and (footnote 2)
            of log prod_j q(z_j) ........ log_qz_matrix, log_qz_mws, decompose_kl("mws")
    eq. S5-S6 minibatch stratified sampling (MSS) ...... mss_log_weights, log_qz_mss,
            decompose_kl("mss")
    eq. S7-S9 MSS is unbiased for q(z) and, like MWS, a lower bound in log
            ................................................ tests/test_btcvae.py
    eq. 3 over the whole data set (the authors' elbo_decomposition.py idea):
            exact q(z) = (1/N) sum_n q(z|n) ......... log_aggregate_posterior, elbo_decomposition
    eq. 6-7, supp. A.1-A.2 MIG, sampling estimator ......... metrics.mig, evaluate
    Table 2 dSprites MIG over scale, rotation, posX, posY (shape = noise) metrics.factor_scores: `mig`
    Fig. 6  traversals over (-2, 2) .................................. save_figures
    supp. D / Fig. S4 mean latent against each factor, one line per shape  save_figures
    supp. H hyperparameters; H.1 architectures ....................... PRESETS, --arch

Shapes: B batch, D latent units, N data set size (the N of eq. S4 / S6: the training
set), Q query points of the full-data estimator, C x H x W image. In the minibatch
estimators M is the paper's minibatch size: M = B in eq. S4, M = B - 1 in eq. S6.

Why the minibatch estimators need care, and the pitfalls this file avoids:
  * log q(z) = log (1/N) sum_n q(z|n) needs all N posteriors; eq. S4 and eq. S6 estimate
    it from the batch. In MSS the weight w_ij multiplies the JOINT density q(z_i|n_j)
    = prod_d q(z_id|n_j), so log w_ij enters log q(z_i) ONCE; in each marginal log q(z_id)
    it enters once per dimension. A popular re-implementation adds log w_ij once per
    dimension inside the joint (logsumexp_j sum_d [log w_ij + log q(z_id|n_j)]), which
    shifts log q(z), hence TC, by (D - 1) log w: about -(D - 1) log(B - 1) while the other
    samples' 1/M terms dominate (overlapping posteriors), up to -(D - 1) log N once the
    sample's own 1/N term does.
  * The authors' MSS weight matrix (`_log_importance_weight_matrix`) writes
    `W.view(-1)[::M+1] = 1/N` meaning the diagonal, but with B = M + 1 rows that stride is
    B, not B + 1, so it fills column 0 (and `[1::M+1]` fills column 1, then `W[M-1, 0]`).
    Every row still sums to 1 (row M is not empty); the defect is that for rows i >= 1 the
    sample's own posterior q(z_i|n_i) gets the stratum weight (row 1) or 1/M (rows >= 2)
    instead of 1/N. Enumerating every batch (N = 6, B = 3) with z's own posterior
    dominating (q(z|n) = 0 for n != n_i), E[estimate] / q(z) is 1, 2, 3 for rows 0, 1, 2
    of their matrix and 1 for every row of ours, whose row i has 1/N at (i, i), (N - M)/(NM)
    at (i, (i + 1) mod B) and 1/M elsewhere (eq. S6 allows any one of the others there).
  * The popular re-implementation of the first point computes MIG from latent samples
    reshaped with `.view(latent_dim, n_samples)` where a transpose is meant, scrambling
    which sample belongs to which unit; metrics.mig never reshapes across that axis.
  * MWS (eq. S4) is a loose lower bound whose VALUES are off by constants: since
    log (1/(N M)) sum_j q(z_i|n_j) = log (1/B) sum_j q(z_i|n_j) - log N, its mi, tc and dwkl
    are the eq. 3 terms of the batch taken as the whole data set (MI <= log B) plus
    log N, (D - 1) log N and -D log N; its gradients are what training needs. The batch
    mi/tc/dwkl in log.csv are therefore training signals (the figure removes those
    constants); the MI, TC and dimension-wise KL to report are the full-data ones in
    metrics.json.

NOTE: architecture. dSprites (and `shapes`) default to the paper's MLP (supp. H.1:
    4096-1200-1200-2D ReLU encoder, D-1200-1200-1200-4096 tanh decoder), as the authors'
    code does; `--arch conv` trains the repository's shared convolutional net (nets.py,
    Dupont 2018 App. B) instead, so that the three methods can be compared on one net.
DEVIATION: for the image-folder data sets (3D faces, chairs, CelebA) supp. H.1 uses
    convolutional nets with BatchNorm; they are not offered: those data sets run the shared
    conv net (no BatchNorm), because BatchNorm makes q(z|x) depend on the other images of
    the batch, which the minibatch estimators of eq. S4 / S6 assume it does not (each
    q(z|n_j) is evaluated at every z_i of the batch), and because none of those data sets
    is available offline to check a re-implementation against the paper's figures.
DEVIATION: the decoder outputs logits and the Bernoulli log-likelihood is
    `binary_cross_entropy_with_logits` (the paper: sigmoid mean + Bernoulli); the same
    value, numerically stable (nets.py).
DEVIATION: the training length is counted in updates, epochs * floor(N / B) of them
    (data.batches drops the last partial batch; the authors' DataLoader keeps it). For
    dSprites N / B = 737,280 / 2048 = 360 exactly, so 50 epochs = 18,000 updates either way.
DEVIATION: eq. S3 assumes the batch's other indices are drawn i.i.d. from p(n); batches here
    are consecutive slices of a per-epoch permutation (without replacement). For B << N the
    difference is negligible; the authors' DataLoader does the same.
DEVIATION: the full-data decomposition estimates every term per sample with the same z
    (mi_s + tc_s + dwkl_s = log q(z_s|n_s) - log p(z_s) exactly), so their sum is a Monte Carlo
    estimate of the average KL that can be CHECKED against the closed form; the authors'
    elbo_decomposition.py takes E[log q(z|x)] and E[log p(z)] in closed form, which makes the
    three terms add to the analytic KL by construction. log q(z) and log q(z_j) themselves
    are exact (all N components), as in the authors' code.
NOTE: the authors' `--lambda-anneal` (gamma = 1 - lambda, lambda from 0.95 to 0 over 7,000
    updates) and `--beta-anneal` (beta ramped from 0) are training tricks the paper does not
    describe; they are not offered: eq. 5 is trained with fixed alpha, beta, gamma.
NOTE: the beta-VAE baseline (`--beta-vae B`) uses the one-sample KL estimate
    log q(z|x) - log p(z) = mi + tc + dwkl, as the authors' code does, so eq. 2 is exactly
    eq. 5 with alpha = beta = gamma = B; the `kl` column of log.csv is the closed form.
NOTE: evaluation uses the posterior mean for the codes (MIG, FactorVAE score, figures).
NOTE: with `--eval-samples n` the full-data decomposition runs over that random subset of
    the training set: q(z) is then the subset's aggregate posterior (MI <= log n), not the
    paper's over all N images; metrics.json records n_data. The default (all N = 737,280
    on dSprites) costs one encoder pass over the data plus `--decomp-samples` x N x D
    Gaussian evaluations (see log_aggregate_posterior).
"""

import argparse
import json
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
import viz

LOG_2PI = math.log(2.0 * math.pi)

# ---------------------------------------------------------------------------
# Arguments and paper presets
# ---------------------------------------------------------------------------

# Chen et al. (2018), supp. H: "Adam with learning rate 0.001; batch size 2048 for dSprites,
# 3D faces and 3D chairs; 1000 for CelebA". sec. 3.2.1: alpha = gamma = 1, only beta tuned;
# sec. 6.1.2 / Fig. 3: beta = 6 for beta-TCVAE (beta = 4 for the beta-VAE baseline). The
# paper prints neither the latent size nor the training length: where it is silent we take
# the authors' vae_quant.py defaults (--latent-dim 10, --num-epochs 50) and say so.
PRESETS = {
    "shapes": dict(                        # dSprites protocol (sec. 6.1)
        cont=10,                           # D = 10: vae_quant.py default --latent-dim 10
        lr=1e-3, batch_size=2048,          # supp. H: Adam 1e-3, batch 2048 (dSprites)
        epochs=50,                         # vae_quant.py default --num-epochs 50 = 18,000 updates
        alpha=1.0, beta=6.0, gamma=1.0,    # sec. 3.2.1 alpha = gamma = 1; Fig. 3 beta = 6
        estimator="mws",                   # sec. 3.2 / supp. B.1 (MSS "performs similarly", Fig. S1)
        arch="mlp",                        # supp. H.1: the dSprites MLP (`--arch conv`: nets.py's conv net)
    ),
    "faces": dict(                         # 3D faces (a folder of 64x64 grey renders)
        cont=10, lr=1e-3, batch_size=2048, # supp. H: batch 2048 (3D faces); D: vae_quant.py default
        epochs=50,                         # vae_quant.py default --num-epochs 50
        alpha=1.0, beta=6.0, gamma=1.0,    # Fig. 3 (faces): beta = 6; supp. H.2 Fig. S15 too
        estimator="mws", arch="conv",
    ),
    "chairs": dict(                        # 3D chairs (a folder of 64x64 images), Fig. 6
        cont=10, lr=1e-3, batch_size=2048, # supp. H: batch 2048 (3D chairs); D: vae_quant.py default
        epochs=50,                         # vae_quant.py default --num-epochs 50
        alpha=1.0, beta=6.0, gamma=1.0,    # ours: the paper gives no beta for Fig. 6; Fig. 3's 6
        estimator="mws", arch="conv",
    ),
    "celeba": dict(                        # CelebA (a folder of 64x64 RGB images), Fig. 7
        cont=32,                           # ours: Fig. 7 finds "more than 10" attributes, so D > 10;
                                           # 32 as for CelebA in Dupont App. C.4
        lr=1e-3, batch_size=1000,          # supp. H: Adam 1e-3, batch 1000 (CelebA)
        epochs=50,                         # vae_quant.py default --num-epochs 50
        alpha=1.0, beta=15.0, gamma=1.0,   # supp. I.2: "beta-TCVAE model one (beta = 15)"
        estimator="mws", arch="conv",
    ),
    "mnist": dict(                         # ours: the paper has no MNIST experiment
        cont=10,                           # the dSprites D
        lr=1e-3,                           # supp. H's Adam rate
        batch_size=64,                     # Dupont App. C.1's batch for this network
        epochs=50,                         # vae_quant.py default --num-epochs 50
        alpha=1.0, beta=6.0, gamma=1.0,    # Fig. 3's beta = 6
        estimator="mws", arch="conv",
    ),
}
PRESETS["dsprites"] = dict(PRESETS["shapes"])       # DeepMind's file: the same protocol
PRESETS["fashion-mnist"] = dict(PRESETS["mnist"])   # ours, as for MNIST

# How each --dataset maps onto data.load_dataset, and the default splits. The
# decomposition of eq. 3 is over the training set (p(n) is its empirical distribution);
# MNIST-like sets report the other metrics on test data, the factor grids are one set.
DATA_SOURCES = {
    "mnist": dict(name="mnist", channels=1, train_split="train", eval_split="test"),
    "fashion-mnist": dict(name="fashion-mnist", channels=1, train_split="train", eval_split="test"),
    "dsprites": dict(name="dsprites", channels=1, train_split="train", eval_split="train"),
    "shapes": dict(name="shapes", channels=1, train_split="train", eval_split="train"),
    "faces": dict(name="images", channels=1, train_split="train", eval_split="train"),
    "chairs": dict(name="images", channels=1, train_split="train", eval_split="train"),
    "celeba": dict(name="images", channels=3, train_split="train", eval_split="train"),
}

DEFAULTS = dict(
    dataset="shapes", data_dir="data", download=True, train_split=None, eval_split=None,
    cont=10, arch="conv", estimator="mws", alpha=1.0, beta=6.0, gamma=1.0, beta_vae=None,
    lr=1e-3, batch_size=2048, epochs=50, iterations=None, seed=0, device="auto", out=None,
    log_every=100, save_every=1000, eval_samples=None, eval_batch_size=512, metric_votes=800,
    decomp_samples=10000, eval_only=False, checkpoint=None, resume=None, no_eval=False,
    no_progress=False, time_budget=None, overwrite=False, force_resume=False,
    pretrained=False, weights_dir=None,
)


# Where the presets' values come from (shown by --help).
PRESET_SOURCES = {"lr": "supp. H", "batch_size": "supp. H", "alpha": "sec. 3.2.1", "gamma": "sec. 3.2.1",
                  "beta": "Fig. 3 (CelebA: supp. I.2)", "estimator": "supp. B.1", "arch": "supp. H.1",
                  "cont": "authors' vae_quant.py default", "epochs": "authors' vae_quant.py default"}


def build_parser(dataset="shapes"):
    p = argparse.ArgumentParser(
        prog="btcvae.py",
        description="beta-TCVAE (Chen et al. 2018): train or evaluate. Defaults shown are the "
                    f"preset for --dataset {dataset} (supp. H where the paper gives them); flags override.",
        argument_default=argparse.SUPPRESS,  # so we know which flags the user set
    )
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
    if dataset in PRESETS:  # an unknown --dataset is reported by the parser itself
        runs.show_defaults(p, DEFAULTS, PRESETS[dataset], lambda key: PRESET_SOURCES.get(key, "ours (see PRESETS)"))
    return p


def _normalize(cfg):
    """Fill what the flags leave open (in place): splits, run folder, beta-VAE weights."""
    runs.normalize(cfg, DEFAULTS, DATA_SOURCES, "btcvae")
    if cfg.get("beta_vae") is not None:
        cfg["alpha"] = cfg["beta"] = cfg["gamma"] = float(cfg["beta_vae"])
    return cfg


def make_config(argv=None):
    """Merge DEFAULTS <- PRESETS[dataset] <- explicit flags; on --resume, the run's own
    config <- the flags that only change how it goes on (runs.merge_resume)."""
    explicit = vars(build_parser(runs.dataset_of(argv, DEFAULTS["dataset"])).parse_args(argv))
    if explicit.get("beta_vae") is not None:
        set_here = [f"--{k}" for k in ("alpha", "beta", "gamma") if k in explicit]
        if set_here:
            raise ValueError(f"--beta-vae B sets alpha = beta = gamma = B; drop {' '.join(set_here)}.")
    if "resume" in explicit:
        cfg = runs.resume_config(explicit, "btcvae", _normalize)
    else:
        cfg = dict(DEFAULTS)
        dataset = explicit.get("dataset", cfg["dataset"])
        cfg.update(PRESETS[dataset])
        cfg.update(explicit)
        runs.use_pretrained(cfg, "btcvae", "betavae" if cfg.get("beta_vae") is not None else None)
        _normalize(cfg)
    validate_config(cfg)
    return cfg


def validate_config(cfg):
    """One ValueError sentence per bad flag combination."""
    runs.validate_run_flags(cfg, ('alpha', 'beta', 'gamma', 'beta_vae'))
    if cfg["cont"] < 1:
        raise ValueError(f"--cont {cfg['cont']}: need at least one latent unit.")
    if cfg.get("beta_vae") is not None and cfg["beta_vae"] < 0:
        raise ValueError(f"--beta-vae {cfg['beta_vae']} is negative; eq. 2 needs beta >= 0.")
    for name in ("alpha", "beta", "gamma"):
        if cfg[name] < 0:
            raise ValueError(f"--{name} {cfg[name]} is negative; eq. 5 penalises each term with a weight >= 0.")
    if cfg["estimator"] == "mss" and cfg["batch_size"] < 2:
        raise ValueError("--estimator mss needs --batch-size >= 2: eq. S6 weighs the other M = B - 1 samples.")
    if cfg["decomp_samples"] < 0:
        raise ValueError("--decomp-samples must be >= 0 (0 skips the full-data decomposition).")


def objective_name(cfg):
    """Which equation of the paper the flags select (printed and saved with the run)."""
    a, b, g = cfg["alpha"], cfg["beta"], cfg["gamma"]
    if cfg.get("beta_vae") is not None or (a == b == g and a != 1.0):
        return f"eq. 2 (beta-VAE, beta = {b:g})"
    if a == b == g == 1.0:
        return "eq. 1 (ELBO, plain VAE)"
    return f"eq. 5 (beta-TCVAE, alpha = {a:g}, beta = {b:g}, gamma = {g:g})"


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
        if arch == "mlp":
            # supp. H.1 (dSprites): 4096-1200-1200-2D ReLU encoder, D-1200-1200-1200-4096 tanh decoder.
            self.encoder = nets.MLPEncoder(image_size, 2 * self.cont)
            self.decoder = nets.MLPDecoder(image_size, self.cont)
        else:
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
    Returns a dict of per-sample (B,) tensors:
        mi = log q(z|x) - log q(z), tc = log q(z) - sum_d log q(z_d),
        dwkl = sum_d log q(z_d) - log p(z), and log_qz_x = log q(z_i|x_i), log_qz,
        log_prod_qzd = sum_d log q(z_id), log_pz = log N(z_i; 0, I).
    Whatever the estimator, mi + tc + dwkl = log q(z|x) - log p(z) (the one-sample KL) exactly.
    """
    b = z.shape[0]
    n = int(dataset_size)
    if n < b:
        raise ValueError(f"dataset_size {n} is smaller than the batch size {b}; pass the training set size N.")
    if estimator not in ("mws", "mss"):
        raise ValueError(f"estimator must be 'mws' or 'mss', got {estimator!r}.")
    log_w = mss_log_weights(b, n).to(z) if estimator == "mss" else None     # (B, B)
    # Row i of the (B, B, D) matrix gives log q(z_i) and log q(z_id) alone, so the rows are
    # taken in blocks. On a CPU the whole matrix (168 MB at B = 2048, D = 10) would stream
    # through memory some 25 times (forward and backward); ~4 MB blocks stay in cache and
    # make the estimator 3x faster. A GPU gets one block (fewer kernel launches).
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
    decoder saw (supp. B.2.1: the batch that sampled z also estimates log q(z));
    dataset_size: N of the training set; alpha, beta, gamma: eq. 5's weights
    (alpha = beta = gamma = 1: eq. 1; all equal to B: beta-VAE, eq. 2);
    estimator: "mws" (supp. B.1, the paper's), "mss" (supp. B.2), or None, allowed only
    when alpha = beta = gamma: eq. 2 needs no log q(z), and mi/tc/dwkl are then NaN (a
    plain beta-VAE step, e.g. the baseline of benchmarks/throughput.py).
    Returns a dict of 0-dim tensors (no host sync): loss; recon = -(1/B) sum_i log p(x_i|z_i),
    summed over pixels; mi, tc, dwkl, the batch means of `decompose_kl`'s terms; kl, the
    closed-form KL(q(z|x)||p(z)) averaged over the batch; and kl_units (D,), that KL per
    unit, for logging.
    """
    if estimator is None and not alpha == beta == gamma:
        raise ValueError("estimator=None drops log q(z), which only cancels when alpha = beta = gamma (eq. 2).")
    # BEGIN SOLUTION: eq. 5, return dict(loss, recon, mi, tc, dwkl, kl, kl_units)
    batch = x.shape[0]
    # -E_q[log p(x|z)] with Bernoulli p: cross-entropy summed over pixels and channels,
    # averaged over the batch (eq. 5's first term, negated).
    recon = F.binary_cross_entropy_with_logits(x_logits, x, reduction="sum") / batch
    kl_units = kl_normal(mu, logvar).mean(dim=0)                 # (D,) closed form, for logging
    if estimator is None:
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

def load_dataset(cfg, split):
    source = DATA_SOURCES[cfg["dataset"]]
    return data.load_dataset(source["name"], split=split, data_dir=cfg["data_dir"],
                             download=cfg["download"], channels=source["channels"])


def build_model(cfg, image_size):
    return BetaTCVAE(image_size, cfg["cont"], cfg["arch"])


def num_iterations(cfg, n_train):
    if cfg["iterations"] is not None:
        return int(cfg["iterations"])
    return int(round(cfg["epochs"] * (n_train // cfg["batch_size"])))


def log_columns(cfg):
    return (["step", "loss", "recon", "mi", "tc", "dwkl", "kl"]
            + [f"kl_z{j}" for j in range(cfg["cont"])] + ["seconds", "img_per_s"])


def train(cfg, device, argv=()):
    """Iteration-based training of eq. 5 (or eq. 1 / eq. 2), until done or --time-budget;
    returns the model, the step reached, the run's config and whether training is finished."""
    out = cfg["out"]
    runs.check_out_dir(out, new_run=not cfg["resume"], overwrite=cfg["overwrite"])
    ds = load_dataset(cfg, cfg["train_split"])
    runs.check_batch_size(cfg, len(ds))
    total = num_iterations(cfg, len(ds))
    runs.seed_everything(cfg["seed"])
    model = nets.place(build_model(cfg, ds.image_size), device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    step, window = runs.restore(cfg, model, optimizer, "btcvae") if cfg["resume"] else (0, None)
    cfg = runs.save_config(cfg, iterations_total=total, objective=objective_name(cfg), train_size=len(ds))
    print(f"{cfg['objective']} with the {cfg['estimator'].upper()} estimator on {cfg['dataset']} "
          f"({len(ds)} images {ds.image_size}), {total} iterations, {nets.count_parameters(model)} "
          f"parameters ({cfg['arch']}), device {device}")

    log = runs.TrainLog(cfg, log_columns(cfg), step, total, device, window, "btcvae", argv)
    stream = data.batches(ds, cfg["batch_size"], seed=cfg["seed"], start_step=step)
    model.train()
    finite = torch.ones((), dtype=torch.bool, device=device)
    try:
        while step < total:
            _, x = next(stream)                               # (B, C, H, W) in [0, 1]
            x = x.to(device, non_blocking=True)
            step += 1
            out_ = model(x)
            terms = btcvae_loss(x, out_["x_logits"], out_["z"], out_["mu"], out_["logvar"], len(ds),
                                cfg["alpha"], cfg["beta"], cfg["gamma"], cfg["estimator"])
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
            # Accumulate on the device; the host reads them once per --log-every.
            log.add(torch.cat([torch.stack([terms[k].detach() for k in ("loss", "recon", "mi", "tc", "dwkl", "kl")]),
                               terms["kl_units"].detach()]))    # (6 + D,)
            finite &= torch.isfinite(terms["loss"].detach())
            if log.due(step):
                if not bool(finite):
                    raise FloatingPointError(step)
                values, _ = log.read()
                log.write(step, values, x.shape[0], loss=values[0], recon=values[1], tc=values[3], kl=values[5])
            if log.end_step(step, model, optimizer, finite):
                break
    except FloatingPointError:
        raise FloatingPointError(runs.nan_message(step, log.ckpt_path, cfg["save_every"],
                                                  "lower --lr or --beta, or check the input data")) from None
    finally:
        log.close()
    return model, step, cfg, log.finish(step)


# ---------------------------------------------------------------------------
# Evaluation and figures
# ---------------------------------------------------------------------------

# eq. 3 over the whole data set (the authors' elbo_decomposition.py idea, reimplemented):
# q(z) is the exact mixture of all N posteriors, not a minibatch estimate.

# The kernel works in base 2: exp(a) = 2^(a log2 e), because torch's exp2 is ~3x faster
# than its exp on CPUs. 2^x below x = -125 is a float32 subnormal (slow, imprecise);
# clamping there adds at most N * 2^-125 ~ N * e^-87 to a sum that is kept only when it
# exceeds e^-50 (see below): a relative error below 1e-10 for N = 737,280.
LOG2_E = 1.0 / math.log(2.0)
_EXP2_FLOOR = -125.0
_FALLBACK_LOG_SUM = -50.0


def log_aggregate_posterior(z, mu, logvar, query_chunk=64, component_chunk=512):
    """Exact log q(z) and log q(z_d) of the aggregate posterior q(z) = (1/N) sum_n q(z|n).

    z (Q, D) query points; mu, logvar (N, D) ALL N posteriors (no minibatch estimate).
    Returns log_qz (Q,) and log_qzd (Q, D) in float64.

    Cost Q * N * D Gaussian log-densities and exponentials (7.4e10 for the paper's
    Q = 10,000 against N = 737,280, D = 10: about 1.5 min on one core of a 2-core
    server CPU), so it is organised for a CPU:
      * blocks of (D, query_chunk, component_chunk) float32 (1.3 MB) stay in cache;
        each element costs two fused multiply-adds, a clamp and one exp2 (base 2);
      * the JOINT exponent sum_d log q(z_d|n) is the sum of the per-dimension exponents
        already in the block (one add per element), so the joint costs 1/D more exps.
        (The quadratic expansion of the joint as a matmul over D would be cheaper only
        without the marginals, and loses ~mu^2/var * 1e-7 nats to float32 cancellation.)
      * logsumexp without a per-row max pass: every exponent is shifted by its known
        upper bound max_n log q(mu_nd | n) = max_n -1/2 (log 2pi + logvar_nd), so each
        exp is <= 1 and the sums cannot overflow. A row whose shifted sum falls below
        e^-50 (its terms lie far below that bound, e.g. one posterior is e^-70 narrower
        than the others) is recomputed exactly in float64 with a max-shifted logsumexp.
    """
    z = z.detach().float()
    mu, logvar = mu.detach().float(), logvar.detach().float()
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
    log_n = math.log(n)
    log_qzd = shift.double() + sums_d.log() - log_n               # (Q, D)
    log_qz = shift.double().sum() + sums.log() - log_n            # (Q,)
    bad = ~(sums_d.log() > _FALLBACK_LOG_SUM).all(dim=1) | ~(sums.log() > _FALLBACK_LOG_SUM)  # (Q,)
    for i in torch.nonzero(bad).flatten().tolist():
        lq = log_density_gaussian(z[i].double(), mu.double(), logvar.double())  # (N, D)
        log_qzd[i] = torch.logsumexp(lq, dim=0) - log_n
        log_qz[i] = torch.logsumexp(lq.sum(dim=1), dim=0) - log_n
    return log_qz, log_qzd


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
    log_qz = torch.empty(q, dtype=torch.float64)                          # (Q,)
    log_qzd = torch.empty(q, d, dtype=torch.float64)                      # (Q, D)
    bar = runs.progress(q, 0, not progress)
    step = 1024
    for i in range(0, q, step):
        log_qz[i:i + step], log_qzd[i:i + step] = log_aggregate_posterior(z[i:i + step], mu, logvar)
        bar.update(min(step, q - i))
    bar.close()
    zd = z.double()
    log_qz_x = log_density_gaussian(zd, mu[rows].double(), logvar[rows].double()).sum(dim=1)   # (Q,)
    log_pzd = log_density_gaussian(zd, torch.zeros_like(zd), torch.zeros_like(zd))            # (Q, D)
    per = dict(mi=log_qz_x - log_qz,                                      # (Q,) eq. 3 (i)
               tc=log_qz - log_qzd.sum(dim=1),                            # (Q,) eq. 3 (ii)
               dwkl=log_qzd.sum(dim=1) - log_pzd.sum(dim=1))              # (Q,) eq. 3 (iii)
    per["kl"] = log_qz_x - log_pzd.sum(dim=1)                             # (Q,) = mi + tc + dwkl
    res = dict(n_data=n, n_samples=q, log_n=math.log(n))
    for key, v in per.items():
        name = "kl_mc" if key == "kl" else key
        res[name] = float(v.mean())
        res[name + "_se"] = float(v.std() / math.sqrt(q)) if q > 1 else float("nan")
    res["kl_analytic"] = float(kl_normal(mu.double(), logvar.double()).sum(dim=1).mean())  # over all N
    res["dwkl_per_unit"] = [float(v) for v in (log_qzd - log_pzd).mean(dim=0)]          # (D,)
    res["seconds"] = round(time.perf_counter() - t0, 2)
    res["samples"] = dict(rows=rows, z=z, log_qz_x=log_qz_x, log_pz=log_pzd.sum(dim=1), **per)
    return res


@torch.no_grad()
def encode_dataset(model, ds, indices, device, batch_size=512):
    """Posterior parameters of every indexed image: mu, logvar (N, D)."""
    model.eval()
    mus, logvars = [], []
    for i in range(0, len(indices), batch_size):
        x = ds.batch(indices[i:i + batch_size]).to(device)  # (B, C, H, W)
        mu, logvar = model.encode(x)
        mus.append(mu.cpu())
        logvars.append(logvar.cpu())
    return torch.cat(mus), torch.cat(logvars)               # (N, D), (N, D)


@torch.no_grad()
def evaluate(model, cfg, device, step, log_path=None):
    """Encode the evaluation split (or a subset), decompose eq. 3 over the training set
    (or the same-sized subset of it), and write metrics.json and the figures."""
    out = cfg["out"]
    os.makedirs(out, exist_ok=True)
    ds = load_dataset(cfg, cfg["eval_split"])
    indices = metrics.eval_indices(len(ds), cfg["eval_samples"], cfg["seed"])  # (N,)
    n = len(indices)
    t0 = time.perf_counter()
    mu, logvar = encode_dataset(model, ds, indices, device, cfg["eval_batch_size"])
    reasons = {}
    res = dict(method="btcvae", objective=objective_name(cfg), estimator=cfg["estimator"],
               dataset=cfg["dataset"], eval_split=cfg["eval_split"], n_eval=n, step=step)
    kl_units = metrics.kl_per_unit(mu, logvar)                      # (D,) nats
    res["kl_per_unit"] = [float(v) for v in kl_units]
    res["kl_total"] = float(np.sum(kl_units))
    res["active_units"] = int(np.sum(kl_units >= metrics.PRUNE_THRESHOLD))
    res["recon_eval"] = _eval_recon(model, ds, indices[:min(n, 2048)], device, cfg["eval_batch_size"])

    def encode(idx):  # FactorVAE vote images, in large no-grad batches
        return encode_dataset(model, ds, idx, device, 4 * cfg["eval_batch_size"])[0], None

    scores, mig_all = metrics.factor_scores(ds, indices, mu, logvar, kl_units, encode, cfg["metric_votes"],
                                            cfg["seed"], reasons)
    res.update(scores)

    if cfg["decomp_samples"] > 0:
        res["decomposition"] = _decompose(model, cfg, device, ds, indices, mu, logvar)
    else:
        res["decomposition"] = None
        reasons["decomposition"] = "skipped with --decomp-samples 0"
    res["null_reasons"] = reasons
    res["eval_seconds"] = round(time.perf_counter() - t0, 2)
    save_figures(model, cfg, ds, indices, mu, kl_units, mig_all, device, log_path, res["decomposition"])
    runs.write_json(os.path.join(out, "metrics.json"), res)
    return res


def _decompose(model, cfg, device, eval_ds, eval_indices, mu, logvar):
    """eq. 3 over the training set (p(n) uniform over it), plus E[log p(x|z)] and the ELBO (eq. 1)."""
    if cfg["train_split"] == cfg["eval_split"]:
        ds, indices = eval_ds, eval_indices                  # the same images: reuse the codes
    else:
        ds = load_dataset(cfg, cfg["train_split"])
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
    log_px = torch.empty(len(s["rows"]), dtype=torch.float64)  # (Q,)
    bs = cfg["eval_batch_size"]
    model.eval()
    for i in range(0, len(s["rows"]), bs):
        x = ds.batch(indices[s["rows"][i:i + bs]]).to(device)                      # (B, C, H, W)
        logits = model.decode(s["z"][i:i + bs].to(device))
        bce = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
        log_px[i:i + bs] = -bce.reshape(bce.shape[0], -1).sum(dim=1).double().cpu()  # (B,)
    q = len(log_px)
    res["split"] = cfg["train_split"]
    res["log_px"] = float(log_px.mean())
    res["log_px_se"] = float(log_px.std() / math.sqrt(q)) if q > 1 else float("nan")
    res["elbo"] = res["log_px"] - res["kl_analytic"]                 # eq. 1 with the closed-form KL
    elbo_s = log_px - s["kl"]                                        # (Q,) one-sample ELBO per image
    res["elbo_mc"] = float(elbo_s.mean())
    res["elbo_mc_se"] = float(elbo_s.std() / math.sqrt(q)) if q > 1 else float("nan")
    res["kl_gap_in_se"] = (res["kl_mc"] - res["kl_analytic"]) / res["kl_mc_se"] if res["kl_mc_se"] > 0 else 0.0
    return res


def _eval_recon(model, ds, indices, device, batch_size):
    total = 0.0
    for i in range(0, len(indices), batch_size):
        x = ds.batch(indices[i:i + batch_size]).to(device)
        logits = model(x)["x_logits"]
        total += float(F.binary_cross_entropy_with_logits(logits, x, reduction="sum"))
    return total / max(len(indices), 1)  # nats per image, summed over pixels, z = posterior mean


def save_figures(model, cfg, ds, indices, mu, kl_units, mig_res, device, log_path=None, decomposition=None):
    """Reconstructions, prior samples, traversals over (-2, 2) ranked by KL (Fig. 6), the
    MI matrix behind MIG, mean latent against each factor (supp. D, Fig. S4) and the
    training curves of the eq. 3 terms, with the full-data values as dashed lines."""
    out = cfg["out"]
    model.eval()
    decode = lambda latent: torch.sigmoid(model.decode(latent.to(device))).cpu()  # noqa: E731
    x = ds.batch(indices[:8]).to(device)                                            # (8, C, H, W)
    viz.save_reconstructions(x, torch.sigmoid(model(x)["x_logits"]), os.path.join(out, "reconstructions.png"),
                             title="top: data, bottom: reconstruction (z = mean)")
    d, n_cols = cfg["cont"], 10
    g = torch.Generator().manual_seed(cfg["seed"])
    z = torch.randn(4, n_cols, d, generator=g)                                      # (4, cols, D) ~ p(z)
    viz.save_traversal(decode, z, os.path.join(out, "samples.png"), title="decoder means of z ~ N(0, I)")
    # Fig. 6: one unit at a time over (-2, 2), the others at the prior mean; rows ranked by KL.
    rows, labels = viz.unit_traversals(torch.linspace(-2.0, 2.0, n_cols), kl_units)  # (D, cols, D)
    viz.save_traversal(decode, rows, os.path.join(out, "traversals.png"), row_labels=labels,
                       title=f"z_j from -2 to 2 in {n_cols} steps, others 0; rows ranked by KL (Fig. 6)")
    if mig_res is not None:
        names = [ds.factor_names[k] for k in mig_res["factors"]]
        headline = (f"MIG (scale, rotation, posX, posY) = {np.mean(mig_res['gaps'][1:]):.3f}"
                    if metrics.is_dsprites_grid(ds) else f"MIG = {mig_res['mig']:.3f}")
        viz.save_matrix(mig_res["mi_normalized"], os.path.join(out, "mig_matrix.png"), xlabel="factor v_k",
                        ylabel="latent z_j", title=f"I(z_j; v_k) / H(v_k), {headline} (eq. 7)",
                        xticklabels=names, yticklabels=mig_res["latents"], fmt=".2f")
    if metrics.is_dsprites_grid(ds):
        viz.save_latent_vs_factor(mu, ds.factors[indices], ds.factor_names, ds.factor_sizes,
                                  os.path.join(out, "latent_vs_factor.png"), data.SHAPE_NAMES)
    log = viz.save_log_figures(log_path, out, "KL per unit during training")
    if log is not None:
        # eq. S4 = log (1/B) sum_j q(z_i|n_j) - log N: MWS is the batch's own decomposition
        # (the batch as the whole data set) plus the constants log N, (D-1) log N, -D log N,
        # which would flatten the plot; MSS (eq. S6) needs no such shift.
        ln = math.log(cfg["train_size"]) if cfg["estimator"] == "mws" else 0.0
        curves = {"index-code MI": log["mi"] - ln, "total correlation": log["tc"] - (d - 1) * ln,
                  "dimension-wise KL": log["dwkl"] + d * ln, "KL (closed form)": log["kl"]}
        hl = None
        if decomposition:
            hl = {f"full data: {name} {decomposition[key]:.2f}": decomposition[key]
                  for name, key in (("MI", "mi"), ("TC", "tc"), ("dwKL", "dwkl"))}
        shifted = " minus log N, (D-1) log N, -D log N" if ln else ""
        viz.plot_curves(curves, os.path.join(out, "decomposition_during_training.png"), x=log["step"],
                        ylabel="nats, batch mean", hlines=hl,
                        title=f"eq. 3 terms, {cfg['estimator'].upper()} batch estimates{shifted}")


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------

def run(cfg, argv=()):
    device = nets.to_device(cfg["device"])
    print("config:\n" + runs.format_config(cfg))
    if cfg["eval_only"]:
        path = runs.checkpoint_path(cfg["checkpoint"])
        ckpt = runs.load_checkpoint(path, "btcvae")
        # The architecture and the objective come from the run that wrote the checkpoint.
        for key in ("cont", "arch", "alpha", "beta", "gamma", "beta_vae", "estimator"):
            cfg[key] = ckpt["config"][key]
        print(f"from the checkpoint: --cont {cfg['cont']} --arch {cfg['arch']}")
        runs.open_eval_folder(cfg)
        ds_probe = load_dataset(cfg, cfg["eval_split"])
        model = build_model(cfg, ds_probe.image_size)
        runs.load_state_dict(model, ckpt["model"], path)
        model = nets.place(model, device)
        res = evaluate(model, cfg, device, int(ckpt["step"]))
    else:
        model, step, cfg, finished = train(cfg, device, argv)
        if cfg["no_eval"] or not finished:
            return None
        res = evaluate(model, cfg, device, step, log_path=os.path.join(cfg["out"], "log.csv"))
    summary = {k: v for k, v in res.items() if k not in ("null_reasons", "decomposition") and not isinstance(v, list)}
    if res.get("decomposition"):
        summary.update({f"decomp_{k}": v for k, v in res["decomposition"].items() if not isinstance(v, list)})
    print(json.dumps(summary, indent=1))
    return res


def main(argv=None):
    return runs.main("btcvae.py", make_config, run, argv)


if __name__ == "__main__":
    main()
