"""CascadeVAE: information cascading and alternating discrete assignment.

Yeonwoo Jeong and Hyun Oh Song, "Learning Discrete and Continuous Factors of Data via
Alternating Disentanglement", ICML 2019. Authors' code (TensorFlow, MIT, dSprites only):
https://github.com/snu-mllab/DisentanglementICML19.

    python cascadevae.py --dataset mnist                         # supp. B.2 preset
    python cascadevae.py --dataset shapes --no-discrete --cont 10  # CascadeVAE-C (Table 1)
    python cascadevae.py --dataset shapes --no-cascade --beta 7  # CascadeVAE-D (Table 1)

Equation -> code
    sec. 4  q(z|x) Gaussian; d inferred through the decoder ............... CascadeVAE
    eq. 6   u_ik = log p(x_i | z_i, e_k), one batched decode ............... CascadeVAE.unary
    sec. 7  test time: d(x) = argmax_k log p(x | mu(x), e_k) ............... CascadeVAE.infer_discrete
    eq. 3   E_x KL(q(z|x)||p(z)) = I(x;z) + TC(z) + sum_j KL(q(z_j)||p(z_j)) why cascade_betas exists
    Prop. 1, 2, eq. 4  TC(z) = sum_{i>=2} I(z_{1:i-1}; z_i), penalised in turn .. cascade_betas
    sec. 3, 6, Alg. 1  beta_j = beta_h, relieved to beta_l one dim every r .. relieved_dims, cascade_betas
    Lemma 1 KL(q(d)||p(d)) <= S E_{d,d'~q(d)}[1(d = d')] - 1 ............... same_class_pairs
    eq. 6   max_d sum_i u_i^T d_i - lam' sum_{pairs} d_i^T d_j, exactly ..... assign
    eq. 5   recon + sum_j beta_j KL_j + lam' pairs / B (d fixed) ........... cascadevae_loss
    eq. 1   beta-VAE (the ablations `--no-cascade --beta B --no-discrete`) .. cascadevae_loss
    Alg. 1  t > t_d: u with the networks frozen, assign d, one step on eq. 5 alternating_step_terms, train
    supp. C, Tables 2-4  disentanglement score, accuracy .................... evaluate
    Figs. 3, 5-11  traversals, I(x; z_j) during training .................... save_figures
    supp. B per-dataset hyperparameters, Tables 1, 3, 4 latent sizes ........ PRESETS

Shapes: B batch, D = m continuous units, S discrete configurations (one categorical
variable; its one-hot vectors are e_1..e_S), N evaluated images, C x H x W image. Where this
file departs from the paper or the authors' code, a `DEVIATION:` comment says so at that line.
"""

import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

import data
import metrics
import nets
import runs
import scoring
import viz

# ---------------------------------------------------------------------------
# Model: encoder -> (mu, sigma), reparameterised z, decoder p(x | z, d) (sec. 4, Fig. 1d)
# ---------------------------------------------------------------------------

# sigma = softplus(encoder output) and the KL terms use log(sigma + 1e-8), as in the authors'
# code (the paper does not say); `logvar` = 2 log(sigma + 1e-8) is for the metrics.
SIGMA_EPS = 1e-8


def reparameterize(mu, sigma):
    """z = mu + sigma * eps, eps ~ N(0, I): z ~ q(z|x) with gradients to mu and sigma.
    mu, sigma (B, D) -> z (B, D)."""
    # BEGIN SOLUTION: sec. 4 reparameterisation, return z = mu + sigma * eps (B, D)
    return mu + sigma * torch.randn_like(mu)  # (B, D), eps ~ N(0, I) (B, D)
    # END SOLUTION

class CascadeVAE(nn.Module):
    """q(z|x) = N(mu, diag sigma^2); p(x | z, d) Bernoulli with d one-hot in {e_1..e_S} (Fig. 1d).

    The encoder outputs only z's parameters: d is inferred through the decoder (sec. 4), by
    `unary` + `assign` in training and `infer_discrete` at test time. disc = 0: CascadeVAE-C.
    """

    def __init__(self, image_size, cont, disc, net="jeong-song"):
        super().__init__()
        self.cont, self.disc = int(cont), int(disc)
        # supp. B Table 2: on 32x32 the encoder has 32 -> 32 -> 64 channels (Dupont's, kept by
        # jointvae.py for the author's weights: 32 -> 64 -> 64); on 64x64 (Table 1) they agree.
        channels = nets.JEONG_SONG_CHANNELS if net == "jeong-song" else None
        # DEVIATION: the nets match supp. B Tables 1-2 and the authors' tfops/nets.py layer by
        # layer, except: 'SAME' padding is our padding=1 (equal for 4x4, stride 2, even sizes);
        # they flatten NHWC, we NCHW; they add an L2 penalty 4e-5 * sum w^2 / 2 and initialise
        # He truncated-normal (conv) / Glorot-uniform (fc); we use no weight decay and
        # PyTorch's default initialisation.
        # One head carries [mu (D) | pre-sigma (D)], like the authors' split of one output.
        self.encoder = nets.Encoder(image_size, 2 * self.cont, channels=channels)
        self.decoder = nets.Decoder(image_size, self.cont + self.disc)

    def encode(self, x):
        """x (B, C, H, W) -> mu (B, D), sigma (B, D) = softplus(.), logvar (B, D) = 2 log sigma."""
        h = self.encoder(x)                               # (B, 2D)
        mu, sigma = h[:, :self.cont], F.softplus(h[:, self.cont:])  # (B, D), (B, D) > 0
        logvar = 2.0 * torch.log(sigma + SIGMA_EPS)       # (B, D), for metrics (kl_per_unit, MIG)
        return mu, sigma, logvar

    def latent(self, z, d=None):
        """Decoder input concat([z, one_hot(d)]): (B, D + S). d=None is Algorithm 1's d = 0,
        the zero vector (before t_d); without a discrete variable it is z itself."""
        if not self.disc:
            return z                                      # (B, D)
        onehot = z.new_zeros(z.shape[0], self.disc) if d is None else F.one_hot(d, self.disc).to(z.dtype)  # (B, S)
        return torch.cat([z, onehot], dim=1)              # (B, D + S)

    def decode(self, latent):
        return self.decoder(latent)                       # (B, C, H, W) logits

    @torch.no_grad()
    def unary(self, x, z):
        """eq. 6: u[i, k] = log p_theta(x_i | z_i, e_k) for all k, in one batched decode;
        Bernoulli log-likelihood summed over pixels and channels. No gradient: the networks
        are frozen while d is chosen (Algorithm 1). x (B, C, H, W), z (B, D) -> u (B, S)."""
        b, s = z.shape[0], self.disc
        onehots = torch.eye(s, device=z.device, dtype=z.dtype)                   # (S, S) e_1..e_S
        lat = torch.cat([z.unsqueeze(0).expand(s, b, self.cont),
                         onehots.unsqueeze(1).expand(s, b, s)], dim=2)            # (S, B, D + S)
        logits = self.decoder(lat.reshape(s * b, self.cont + s))                 # (S*B, C, H, W)
        logits = logits.reshape(s, b, *x.shape[1:])                              # (S, B, C, H, W)
        nll = F.binary_cross_entropy_with_logits(logits, x.unsqueeze(0).expand_as(logits),
                                                 reduction="none")               # (S, B, C, H, W)
        return -nll.sum(dim=(2, 3, 4)).t()                                       # (B, S)

    @torch.no_grad()
    def infer_discrete(self, x, mu):
        """Test time: d(x) = argmax_k log p(x | mu(x), e_k), no pair penalty (sec. 7,
        as the authors' evaluation: z at the posterior mean). -> d (B,), u (B, S)."""
        u = self.unary(x, mu)                             # (B, S)
        return u.argmax(dim=1), u

    def forward(self, x, d=None):
        """Reconstruction: sampled z in train mode, z = mu in eval mode; d as given (None = 0)."""
        mu, sigma, logvar = self.encode(x)
        z = reparameterize(mu, sigma) if self.training else mu   # (B, D)
        return dict(x_logits=self.decode(self.latent(z, d)), mu=mu, sigma=sigma, logvar=logvar, z=z)

# ---------------------------------------------------------------------------
# Loss: eq. 5-6 (and eq. 1 for the ablations), the cascade (sec. 3, 6), the assignment
# ---------------------------------------------------------------------------

def kl_normal(mu, sigma):
    """KL(N(mu, sigma^2) || N(0, 1)) per unit: 1/2 (mu^2 + sigma^2 - 1) - log sigma, (B, D);
    batch-averaged, E_x KL(q(z_j|x)||p(z_j)) >= I(x; z_j), the curves of Figs. 5, 9, 11."""
    return 0.5 * (mu.pow(2) + sigma.pow(2) - 1.0) - torch.log(sigma + SIGMA_EPS)  # (B, D)

def relieved_dims(step, m, r, t_d, schedule="paper"):
    """How many dims have been switched from beta_h to beta_l at update `step` (= t), 0..m.

    paper (Algorithm 1): "for t = 1..MAXITER: if t is a multiple of r, switch beta_j to
        beta_l and j <- j + 1": n(t) = min(floor(t / r), m); t_d plays no part.
    code (the authors' dSprites script): n(t) = min(ceil(t / r) - [t > t_d], m): dim 0 is
        relieved at the first update and the cascade pauses for one period at t_d.
    """
    # BEGIN SOLUTION: Algorithm 1 cascade schedule, return the number of relieved dims (int)
    step = int(step)
    if schedule == "paper":
        n = step // r
    elif schedule == "code":
        n = 0 if step <= 0 else (step - 1) // r + 1 - (1 if step > t_d else 0)
    else:
        raise ValueError(f"schedule must be 'paper' or 'code', got {schedule!r}.")
    return max(0, min(n, int(m)))
    # END SOLUTION

def cascade_betas(step, m, beta_h, beta_l, r, t_d, schedule="paper"):
    """sec. 3, 6, Algorithm 1: the per-dim KL weights beta_j at update `step`, (m,) float32.

    Each beta_j starts at beta_h and is relieved to beta_l in order j = 1, 2, ...; while
    z_{i+1:m} are held at beta_h, eq. 1 bounds I(x; z_{1:i}) = I(x; z_{1:i-1}) + I(x; z_i)
    - I(z_{1:i-1}; z_i) (Prop. 2), pushing down the summand I(z_{1:i-1}; z_i) of TC(z) (eq. 4,
    Prop. 1): the newly opened dim carries information independent of the earlier ones.
    """
    # BEGIN SOLUTION: sec. 6 per-dim betas, return (m,) float32: beta_l for relieved dims, else beta_h
    n = relieved_dims(step, m, r, t_d, schedule)
    betas = torch.full((int(m),), float(beta_h))     # (D,)
    betas[:n] = float(beta_l)
    return betas
    # END SOLUTION

def same_class_pairs(d, num_disc):
    """Class counts n_k (S,) of a batch's assignment and its unordered same-class pairs.

    Lemma 1: for a uniform p(d), KL(q(d)||p(d)) = sum_d q log(q S) <= S E_{d,d'~q(d)}[1(d =
    d')] - 1 (log y <= y - 1). On a batch (q_k = n_k / B) sum_{i != j} 1[d_i = d_j] = B^2
    sum_k q_k^2 - B = 2 * pairs is increasing affine in the bound, so penalising pairs pushes
    q(d) towards uniform. pairs = sum_k n_k (n_k - 1) / 2: each unordered pair once, as the
    authors' code counts. d LongTensor (B,) in 0..S-1 -> counts (S,), pairs 0-dim, float32.
    """
    # BEGIN SOLUTION: Lemma 1 pair term, return (counts n_k (S,), unordered same-class pairs)
    counts = F.one_hot(d, num_disc).sum(dim=0).to(torch.float32)   # (S,) n_k
    pairs = (counts * (counts - 1.0)).sum() / 2.0                  # 0-dim
    return counts, pairs
    # END SOLUTION

def assign(u, lam, slots=None):
    """eq. 6, inner problem, solved exactly: d = argmax_d sum_i u[i, d_i] - lam * pairs(d).

    u (B, S) tensor or array: u[i, k] = log p(x_i | z_i, e_k); lam >= 0 is lam' per
    unordered same-class pair. Returns d LongTensor (B,) on the CPU.

    Why a linear assignment is exact (notebooks/04_cascade_assignment.ipynb checks it by
    brute force). pairs(d) = sum_k f(n_k) with f(n) = n (n - 1) / 2 and f(n + 1) - f(n) = n:
    f is convex in the class count. Give every class k slots t = 0..B-1, image i in slot
    (k, t) costing -u[i, k] + lam * t, and match every image to its own slot (a (B, S*B)
    linear assignment). (a) An assignment whose class-k images use slots T_k costs
    -sum_i u[i, d_i] + lam sum_k sum_{t in T_k} t >= -objective(d), with equality for the
    lowest slots T_k = {0..n_k - 1}, as sum_{t < n_k} t = f(n_k); (b) every labelling d is
    reached that way. So the optimal assignment's classes are an optimal d. With lam < 0
    the slot costs would decrease and (a) fails, hence the check; lam = 0 is the row-wise
    argmax.

    Speed (same optimum): only the first `slots` slots of each class are offered, default
    1 + the largest class of the row-wise argmax (never below ceil(B / S)). If no class of
    the solution fills its cap, the cap is slack: the slot LP is convex, a solution where no
    cap binds is a global minimum of the uncapped problem. Otherwise the cap doubles (at
    most log2 B more solves; `slots` = B is the plain construction).
    """
    u = np.asarray(u.detach().cpu().double().numpy() if isinstance(u, torch.Tensor) else u, dtype=np.float64)  # (B, S)
    if u.ndim != 2 or u.shape[0] < 1 or u.shape[1] < 1:
        raise ValueError(f"u must be a (B, S) array with B, S >= 1, got shape {u.shape}.")
    if not np.isfinite(u).all():
        raise ValueError("u has NaN or infinite entries; the log-likelihoods must be finite to assign classes.")
    try:
        lam = float(lam.item() if isinstance(lam, torch.Tensor) and lam.numel() == 1 else lam)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"lam must be one number (lam' of eq. 6), got {lam!r}.") from None
    if not np.isfinite(lam) or lam < 0:
        raise ValueError(f"lam = {lam}: the pair penalty must be a finite number >= 0 for the assignment to be exact.")
    # BEGIN SOLUTION: eq. 6 as a linear assignment, return the optimal d, LongTensor (B,) on the CPU
    b, s = u.shape
    if slots is None:
        slots = int(np.bincount(u.argmax(axis=1), minlength=s).max()) + 1
    if int(slots) < 1 or s * int(slots) < b:
        # Fewer than B slots in all: some image would get none (and no class).
        raise ValueError(f"slots = {slots} offers {s} x {slots} = {s * int(slots)} places for {b} images; "
                         f"pass slots >= ceil(B / S) = {-(-b // s)} (or None).")
    slots = min(int(slots), b)
    while True:
        slot_cost = lam * np.arange(slots, dtype=np.float64)   # (slots,) the t-th member costs lam * t
        cost = (-u)[:, :, None] + slot_cost[None, None, :]     # (B, S, slots): [i, k, t]
        # DEVIATION: scipy's exact linear assignment in float64; the paper cites minimum-cost
        # flow, the authors' code runs OR-tools' min-cost flow on costs rounded to int32 at
        # 1e-4 nats. Same problem and optimum up to that rounding.
        rows, cols = linear_sum_assignment(cost.reshape(b, s * slots))  # column k * slots + t
        d = np.empty(b, dtype=np.int64)                        # (B,)
        d[rows] = cols // slots
        if slots == b or np.bincount(d, minlength=s).max() < slots:
            return torch.from_numpy(d)
        slots = min(b, 2 * slots)                              # a cap was binding: widen it
    # END SOLUTION

def cascadevae_loss(x, x_logits, mu, sigma, betas, d=None, num_disc=0, lam=0.0):
    """The loss to minimise (minus eq. 6 / B, with d fixed) and its terms.

    x (B, C, H, W) in [0, 1]; x_logits (B, C, H, W) decoded from (z, e_d) (or (z, 0)); mu,
    sigma (B, D); betas (D,) from `cascade_betas` (all equal: eq. 1 / CascadeVAE-D); d (B,)
    from `assign` or None (before t_d, no discrete variable); num_disc S; lam = lam' of eq. 6.
    Returns a dict of 0-dim tensors (no host sync) plus per-unit KLs (D,) and counts (S,):
      recon        -(1/B) sum_i log p(x_i | z_i, e_{d_i}), summed over pixels  (eq. 5, 1st term)
      kl_units     (D,) batch-mean KL_j;  kl = sum_j KL_j
      weighted_kl  sum_j beta_j KL_j                                              (eq. 5-6, sec. 6)
      penalty      lam' * pairs / B: constant in the parameters once d is fixed (eq. 6)
      h_d, kl_d    entropy of the batch's q(d) and KL(q(d)||uniform) = log S - h_d
      lemma1_bound S sum_k q_k^2 - 1 >= kl_d (Lemma 1)
      loss         recon + weighted_kl + penalty
    With d = None, counts is zeros (S,) and penalty, h_d, kl_d, lemma1_bound are 0.
    """
    # BEGIN SOLUTION: eq. 5-6, return dict(loss, recon, kl, weighted_kl, penalty, h_d, kl_d, ...)
    batch = x.shape[0]
    # -E_q[log p(x|z, d)]: Bernoulli NLL summed over pixels and channels, mean over the batch.
    # DEVIATION: the decoder outputs logits and the likelihood is BCE with logits (the paper:
    # sigmoid + cross-entropy): the same value, numerically stable, as the authors' code.
    recon = F.binary_cross_entropy_with_logits(x_logits, x, reduction="sum") / batch  # eq. 5, 1st term, negated
    kl_units = kl_normal(mu, sigma).mean(dim=0)                  # (D,) batch mean per unit
    kl = kl_units.sum()                                          # KL(q(z|x)||p(z)), summed over units
    # eq. 5-6 with a beta per dim (sec. 6): sum_j beta_j KL(q(z_j|x)||p(z_j)).
    weighted_kl = (betas.to(kl_units.dtype) * kl_units).sum()
    if d is not None:
        counts, pairs = same_class_pairs(d, num_disc)            # (S,), 0-dim
        counts = counts.to(kl.dtype)
        # eq. 6 as printed sums over ordered pairs i != j; the authors' code counts each unordered
        # pair once and supp. B's lam' values were tuned with it: `lam` is that lam'.
        penalty = lam * pairs.to(kl.dtype) / batch               # eq. 6: + lam' sum_{pairs} d_i^T d_j, / B
        q = counts / batch                                       # (S,) the batch's q(d)
        h_d = -torch.special.xlogy(q, q).sum()
        kl_d = math.log(num_disc) - h_d                          # KL(q(d)||p(d)), p uniform
        lemma1_bound = num_disc * q.pow(2).sum() - 1.0           # Lemma 1: >= kl_d
    else:
        counts, (penalty, h_d, kl_d, lemma1_bound) = kl.new_zeros(max(num_disc, 0)), [kl.new_zeros(())] * 4
    loss = recon + weighted_kl + penalty
    return dict(loss=loss, recon=recon, kl=kl, weighted_kl=weighted_kl, penalty=penalty, h_d=h_d, kl_d=kl_d,
                lemma1_bound=lemma1_bound, kl_units=kl_units, counts=counts)
    # END SOLUTION

def alternating_step_terms(model, x, betas, lam, assign_discrete):
    """Algorithm 1's loop body up to the gradient (the caller steps the optimiser).

    Sample z ~ q(z|x) once; if `assign_discrete` (t > t_d, S >= 2): u from one no-grad decode
    of B*S images, d = assign(u, lam); then decode (z, e_d) with gradients, the same z.
    Returns `cascadevae_loss`'s terms plus d (B,) or None, u (B, S) or None and the
    seconds the solve took (host time, excluding the device-to-host copy of u).
    """
    mu, sigma, _ = model.encode(x)                     # (B, D), (B, D)
    z = reparameterize(mu, sigma)                      # (B, D) one sample per image
    d, u, solve_seconds = None, None, 0.0
    if model.disc and assign_discrete:
        u = model.unary(x, z.detach())                 # (B, S), networks frozen
        u_host = u.cpu()                               # the one host sync per step of the alternating phase
        if not bool(torch.isfinite(u_host).all()):     # a NaN model: TrainLog says what to do
            raise FloatingPointError("non-finite log-likelihoods in the assignment step")
        t0 = time.perf_counter()
        d = assign(u_host, lam).to(x.device)           # (B,) eq. 6, exact
        solve_seconds = time.perf_counter() - t0
    x_logits = model.decode(model.latent(z, d))        # (B, C, H, W), d held fixed
    terms = cascadevae_loss(x, x_logits, mu, sigma, betas, d, model.disc, lam)
    terms.update(d=d, u=u, solve_seconds=solve_seconds)
    return terms

def schedule_t_d(cfg):
    """The t_d the cascade schedule sees: CascadeVAE-C has no discrete step to pause for (the
    authors' CascadeVAE-C relieves one more dim every r updates until all m are)."""
    return math.inf if cfg["no_discrete"] else cfg["t_d"]

def betas_at(cfg, step):
    """beta_j at update `step`: the cascade, or one beta for every dim (--no-cascade)."""
    if cfg["no_cascade"]:
        return torch.full((cfg["cont"],), float(cfg["beta"]))  # (D,)
    return cascade_betas(step, cfg["cont"], cfg["beta_h"], cfg["beta_l"], cfg["r"], schedule_t_d(cfg),
                         cfg["schedule"])

# ---------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------

def train(model, optimizer, scaler, ds, cfg, step, total, log, device):
    """Algorithm 1 from update `step` to `total` (or until `log` says stop); returns the
    step reached."""
    batches = data.batches(ds, cfg["batch_size"], seed=cfg["seed"], start_step=step)  # a function of (seed, step)
    model.train()
    beta_cache = {}  # the betas change every r steps: one device copy per value
    while step < total:
        _, x = next(batches)                                  # (B, C, H, W) in [0, 1]
        x = x.to(device, non_blocking=True)
        step += 1                                             # the t-th update of Algorithm 1
        n_relieved = -1 if cfg["no_cascade"] else relieved_dims(
            step, cfg["cont"], cfg["r"], schedule_t_d(cfg), cfg["schedule"])
        if n_relieved not in beta_cache:
            beta_cache[n_relieved] = betas_at(cfg, step).to(device)   # (D,)
        terms = alternating_step_terms(model, x, beta_cache[n_relieved], cfg["lam"],
                                       assign_discrete=step > cfg["t_d"])
        # DEVIATION: one Adam for the whole run; the authors' model.py builds a new Adam
        # optimiser for each cascade stage, so its moments and bias correction restart each
        # time a unit is relieved.
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(terms["loss"]).backward()                # fp16: loss scaled so small gradients survive
        scaler.step(optimizer)                                # fp32, bf16: plain optimizer.step()
        scaler.update()
        mean = {k: terms[k] for k in LOGGED}
        mean["kl_z"] = terms["kl_units"]
        if log.update(step, model, optimizer, mean, host=dict(solve_ms=1000.0 * terms["solve_seconds"]),
                      now=dict(relieved=cfg["cont"] if n_relieved < 0 else n_relieved)):
            break
    return step


LOGGED = ("loss", "recon", "kl", "weighted_kl", "penalty", "h_d", "kl_d", "lemma1_bound")  # cascadevae_loss's


def log_columns(cfg):
    return [*LOGGED, "relieved", "solve_ms"] + [f"kl_z{j}" for j in range(cfg["cont"])]


# ---------------------------------------------------------------------------
# Evaluation and figures
# ---------------------------------------------------------------------------

# Traversal ranges of the papers' figures (dSprites Figs. 3, 5; MNIST / Fashion-MNIST / Chairs Figs. 8-10).
TRAVERSAL_RANGES = {"dsprites": [(1.5, "Fig. 3"), (1.2, "Fig. 5")], "shapes": [(1.5, "Fig. 3"), (1.2, "Fig. 5")]}
DEFAULT_TRAVERSAL = [(2.0, "Figs. 8-10")]


def discrete_trained(cfg, step):
    """Whether the alternating step has run by update `step` (t > t_d, Algorithm 1)."""
    return not cfg["no_discrete"] and step is not None and step > cfg["t_d"]

def encode_dataset(model, ds, indices, device, batch_size=512, discrete=True):
    """Posterior parameters of every indexed image: mu, logvar (N, D), and the test-time
    d(x) = argmax_k log p(x | mu, e_k) (N,), S decoder passes per image (None when
    `discrete` is False: the encoder alone infers nothing discrete)."""
    model.eval()
    discrete = bool(discrete and model.disc)

    def encode(x):                                        # x (B, C, H, W) -> mu, logvar (B, D)[, d (B,)]
        mu, _, logvar = model.encode(x)
        return (mu, logvar) + ((model.infer_discrete(x, mu)[0],) if discrete else ())

    # The S-fold decode makes a batch S times larger; keep the decoded block near batch_size.
    parts = scoring.encode_batches(encode, ds, indices, device, max(1, batch_size // model.disc) if discrete
                                   else batch_size)
    return parts[0], parts[1], (parts[2] if discrete else None)  # (N, D), (N, D), d (N,) or None

@torch.no_grad()
def evaluate(model, cfg, device, step, out=None, log_path=None):
    """Encode the evaluation split (or --eval-samples of it) and write metrics.json and the
    figures into `out`.
    NOTE: the authors' code keeps the checkpoint (of one every 1e4 updates) with the best
    score, a choice made with the ground-truth factors; we evaluate the last model.
    out=None (--eval-every): the metrics only, returned, nothing written.
    """
    t0 = time.perf_counter()
    ds = data.load_for(cfg, cfg["eval_split"])
    indices = scoring.eval_indices(len(ds), cfg["eval_samples"], cfg["seed"])  # (N,)
    use_d = discrete_trained(cfg, step)
    mu, logvar, d = encode_dataset(model, ds, indices, device, cfg["eval_batch_size"], discrete=use_d)
    reasons, kl_units = {}, metrics.kl_per_unit(mu, logvar)        # kl_units (D,) nats
    res = dict(method="cascadevae", objective=objective_name(cfg), dataset=cfg["dataset"],
               eval_split=cfg["eval_split"], n_eval=len(indices), step=step,
               kl_per_unit=[float(v) for v in kl_units], kl_cont_total=float(np.sum(kl_units)))
    # Bernoulli NLL of x given (mu(x), e_{d(x)}) (or (mu, 0)), nats per image summed over pixels
    res["recon_eval"] = float(scoring.bernoulli_nll(
        lambda x, i: model.decode(model.latent(*_code(model, x, use_d))), ds, indices[:2048], device,
        max(1, cfg["eval_batch_size"] // max(model.disc, 1))).mean())
    if use_d:
        counts = torch.bincount(d, minlength=model.disc)              # (S,)
        q = counts.double() / len(d)
        res.update(discrete_counts=counts.tolist(), h_d_eval=float(-torch.special.xlogy(q, q).sum()) + 0.0)  # = I(x; d)
    no_d_reason = ("no discrete variable (--no-discrete)" if cfg["no_discrete"] else
                   f"the alternating step never ran (step {step} <= t_d {cfg['t_d']}): the model is CascadeVAE-C (sec. 6)")
    labels = ds.labels[indices] if ds.labels is not None else None  # (N,)
    res.update(scoring.accuracy_scores(d, labels, reasons, no_d_reason))  # Tables 2-4
    # One order of the values of d for every per-code figure: row k the value matched to class k.
    class_names = data.CLASS_NAMES.get(cfg["dataset"])
    code_rows = viz.code_order(d, labels, model.disc, class_names, "d")[:2] if use_d else None
    if res["accuracy_hungarian"] is not None and out is not None:
        viz.save_confusion(d, labels, model.disc, class_names, os.path.join(out, "confusion.png"),
                           "d(x) = argmax_k log p(x|mu, e_k)", "discrete code vs class (Tables 2-4)",
                           accuracy={"Hungarian": res["accuracy_hungarian"], "majority": res["accuracy_majority"]},
                           prefix="d")

    def encode(idx):  # FactorVAE vote images: (mu, d(x)) in large no-grad batches
        return encode_dataset(model, ds, idx, device, 4 * cfg["eval_batch_size"], use_d)[::2]

    # DEVIATION: a discrete code that takes one value over the evaluated data is left out of the
    # FactorVAE vote; the authors divide by var + 1e-10, so a collapsed d wins every vote and the
    # score is 1/K (metrics.factor_vae_score(constant_discrete="authors") gives theirs).
    scores, mig_all = scoring.factor_scores(ds, indices, mu, logvar, kl_units, encode, cfg["metric_votes"],
                                            cfg["seed"], reasons, discrete_codes=d)
    res.update(scores, null_reasons=reasons, eval_seconds=round(time.perf_counter() - t0, 2))
    # The discrete value most images are assigned to: the continuous traversals hold d there.
    typical = int(torch.bincount(d).argmax()) if use_d else None
    if out is None:                                           # --eval-every: the metrics only
        return res
    save_figures(model, cfg, ds, indices, kl_units, typical, device, use_d, out, log_path, code_rows)
    viz.save_factor_figures(out, mig_all, mu, ds, indices, data.SHAPE_NAMES if scoring.is_dsprites_grid(ds) else None)
    runs.write_json(os.path.join(out, "metrics.json"), res)
    return res

def _code(model, x, use_d):
    """The test-time code of x (B, C, H, W): mu(x) (B, D) and d(x) (B,) (None without d)."""
    mu, _, _ = model.encode(x)
    return mu, (model.infer_discrete(x, mu)[0] if use_d else None)

def save_figures(model, cfg, ds, indices, kl_units, typical, device, use_d, out, log_path=None, code_rows=None):
    """Reconstructions, samples per discrete value, traversals of the informative units ranked
    by KL with the discrete row last (Figs. 3, 5 on dSprites; 8-10; also as traversals.gif),
    the discrete traversal (Figs. 3 right, 7, 8b), and the KL bounds on I(x; z_j) and the
    batch's H(d) during training (Figs. 5, 9, 11; Lemma 1). code_rows = (values of d, row
    labels): the order of the per-code rows (the confusion matrix's, viz.code_order)."""
    m, s, n_cols = cfg["cont"], model.disc, 10
    model.eval()
    decode = lambda latent: torch.sigmoid(model.decode(latent.to(device))).cpu()  # noqa: E731
    x = ds.batch(indices[:8]).to(device)                                            # (8, C, H, W)
    viz.save_reconstructions(x, torch.sigmoid(model.decode(model.latent(*_code(model, x, use_d)))),
                             os.path.join(out, "reconstructions.png"),
                             title="top: data, bottom: reconstruction from (mu, d(x))")
    eye = torch.eye(s)                                                              # (S, S) e_1..e_S
    order, code_labels = code_rows or (list(range(s)), [f"d={k}" for k in range(s)])
    ranges = ([(cfg["traversal_range"], "--traversal-range")] if cfg.get("traversal_range")
              else TRAVERSAL_RANGES.get(cfg["dataset"], DEFAULT_TRAVERSAL))
    # Only the informative units (KL > 0.1 nats, at least one): a dead unit's row is blank.
    units, n_inactive = viz.informative_units(kl_units, metrics.PRUNE_THRESHOLD)
    note = viz.inactive_note(n_inactive, metrics.PRUNE_THRESHOLD)
    for i, (span, fig) in enumerate(ranges):
        # Rows: each dim ranked by KL, the others 0, d its most common value; last: d cycling (Fig. 10).
        values = torch.linspace(-span, span, n_cols)                                # (cols,)
        rows, labels = viz.unit_traversals(values, kl_units, eye[typical] if use_d else torch.zeros(s),
                                           units)                                   # (R, cols, D+S)
        gif_rows, gif_labels = rows[:10], labels[:10]
        if use_d:
            cyc = torch.cat([torch.zeros(n_cols, m), eye[torch.arange(n_cols) % s]], dim=1)  # (cols, D+S)
            rows, labels = torch.cat([rows, cyc[None]]), labels + [f"d: e_1..e_{s} (period {s})"]
        held = f"d held at {code_labels[order.index(typical)]}, last row: discrete" if use_d else "no discrete variable"
        name = "traversals.png" if i == 0 else f"traversals_{span:g}.png"
        viz.save_traversal(decode, rows, os.path.join(out, name), row_labels=labels,
                           col_labels=viz.value_labels(values),
                           title=f"traversals in (-{span:g}, {span:g}) ranked by KL ({fig}); {held}"
                                 + (f"; {note}" if note else ""))
        if i == 0:
            viz.save_traversal_gif(decode, gif_rows, os.path.join(out, "traversals.gif"), values, gif_labels)
    if use_d:
        # Rows fix d = e_k: z ~ p(z) = N(0, I); and (Figs. 3 right, 7, 8b) the most informative unit traversed.
        top, span, g = int(np.argmax(kl_units)), ranges[0][0], torch.Generator().manual_seed(cfg["seed"])
        viz.save_code_figures(decode, out, torch.randn(n_cols, m, generator=g), torch.linspace(-span, span, n_cols), top,
                              eye[order], code_labels, ("samples, discrete value fixed per row",
                              f"discrete value per row x z{top} (most informative) traversed (Figs. 3, 7)"))
    log = viz.save_log_figures(log_path, out, "KL(q(z_j|x)||p(z_j)), an upper bound of I(x; z_j) (Figs. 5, 9, 11)")
    if log is not None and s:
        # The batch's q(d): its entropy (an estimate of H(d), not I(x; d)) and Lemma 1.
        viz.plot_curves({"H(q(d)) of the batch": log["h_d"], "KL(q(d)||p(d))": log["kl_d"],
                         "Lemma 1 bound S E[1(d=d')] - 1": log["lemma1_bound"]},
                        os.path.join(out, "discrete_during_training.png"), x=log["step"], ylabel="nats, batch",
                        hlines={f"log S = {math.log(s):.2f}": math.log(s)},
                        title="discrete variable during training (Figs. 5, 9; Lemma 1)")

def load_for_evaluation(cfg, device):
    """--eval-only / --pretrained: the checkpoint's model and step; the architecture and the
    schedule that decides whether d was trained come from the run (runs from before --net
    used Dupont's encoder)."""
    path = runs.checkpoint_path(cfg["checkpoint"])
    ckpt = runs.load_checkpoint(path, "cascadevae")
    trained = {**DEFAULTS, "net": "dupont", **ckpt["config"]}  # runs before --net: Dupont's encoder
    for key in TRAINED_WITH:                                  # the settings the weights were trained with
        cfg[key] = trained[key]
    model = CascadeVAE(data.image_size_for(cfg), cfg["cont"],
                       0 if cfg["no_discrete"] else cfg["disc"], cfg["net"])
    runs.load_state_dict(model, ckpt["model"], path)
    return nets.place(model, device), int(ckpt["step"])


# ---------------------------------------------------------------------------
# Presets and arguments
# ---------------------------------------------------------------------------

# Jeong & Song (2019) supp. B and the tables; r, t_d and iterations count updates (Algorithm 1's t).
# The authors' dSprites code differs from supp. B.1 (we follow B.1 and Table 1): code t_d =
# 4 periods x 2e4 = 8e4 (B.1: 1e5); code beta_l = 0.1 (Table 1: 1.0); code Adam lr 1e-4,
# constant (B.1: 3e-4; tfops/lr_op.py builds a staircase decay whose global_step is never
# incremented). `--schedule code --t-d 80000 --lr 1e-4` gives the code's settings. supp. B
# gives no m or beta_l for MNIST, Fashion-MNIST or Chairs: each value below says its source.
ALL = dict(batch_size=64, beta_h=10.0)   # supp. B, every data set: batch 64, beta_h fixed at 10.0
PRESETS = {
    "dsprites": dict(ALL,                # supp. B.1 dSprites
        cont=6, beta_l=1.0,              # Table 1, CascadeVAE row: m = 6, beta_l = 1.0 (90.49 mean)
        disc=3, lr=3e-4,                 # B.1: dimension of discrete 3 (S = 3, Tables 1-2); Adam 3e-4
        lam=0.001, r=20000,              # B.1: lam' 0.001, r 2e4
        t_d=100000, iterations=300000,   # B.1: t_d 1e5, iterations 3e5
    ),
    "mnist": dict(ALL,                   # supp. B.2 MNIST
        cont=10,                         # Table 3 first row and Fig. 9: m = 10
        beta_l=1.0,                      # not given for MNIST: Table 1's beta_l
        disc=10, lr=3e-4,                # B.2: dimension of discrete 10; Adam 3e-4
        lam=0.1, r=10000,                # B.2: lam' 0.1, r 1e4
        t_d=0, iterations=120000,        # B.2: t_d 0, iterations 1.2e5
    ),
    "fashion-mnist": dict(ALL,           # supp. B.3 FashionMNIST
        cont=10,                         # Table 4 first row: m = 10
        beta_l=1.0,                      # not given: Table 1's beta_l
        disc=10, lr=1e-4,                # B.3: dimension of discrete 10; Adam 1e-4
        lam=0.1, r=10000,                # B.3: lam' 0.1, r 1e4
        t_d=0, iterations=120000,        # B.3: t_d 0, iterations 1.2e5
    ),
    "chairs": dict(ALL,                  # supp. B.4 Chairs (a folder of 64x64 images)
        cont=7,                          # not given: 7 dims are relieved in 1.5e5 updates at r = 2e4
        beta_l=1.0,                      # not given: Table 1's beta_l
        disc=3, lr=1e-4,                 # B.4: dimension of discrete 3 (Fig. 10: "period of 3"); Adam 1e-4
        lam=0.01, r=20000,               # B.4: lam' 0.01, r 2e4
        t_d=60000, iterations=150000,    # B.4: t_d 6e4, iterations 1.5e5
    ),
}
PRESETS["shapes"] = dict(PRESETS["dsprites"])  # procedural dSprites: the dSprites preset

# Accuracy on test data for MNIST / Fashion-MNIST (Tables 3-4); factor data sets are one grid.
# NOTE: the paper splits MNIST 50,000 / 10,000 (sec. 7.2); by default we train on torchvision's
# 60,000 training images and evaluate on its 10,000 test images. The offline runs of the
# README's table train and evaluate on the 10,000 test images (`--train-split test`,
# 120,000 updates of 64 = 768 epochs of them).
DATA_SOURCES = data.sources("mnist", "fashion-mnist", "dsprites", "shapes", "chairs")

DEFAULTS = dict(
    dataset="mnist", cont=10, disc=10, no_discrete=False, beta_h=10.0, beta_l=1.0, r=10000, t_d=0,
    schedule="paper", lam=0.1, no_cascade=False, beta=None, lr=3e-4, batch_size=64, iterations=120000,
    save_every=5000, net="jeong-song", traversal_range=None, **runs.RUN_DEFAULTS,
)
# The settings of a trained model that --eval-only takes from its checkpoint.
TRAINED_WITH = ("cont", "disc", "no_discrete", "t_d", "no_cascade", "beta", "beta_h", "beta_l", "r", "schedule",
                "lam", "iterations", "net", "lr", "batch_size", "train_split")


def preset_source(dataset, key):
    """Where a preset value comes from (shown by --help)."""
    appendix = {"dsprites": "supp. B.1", "shapes": "supp. B.1 (dSprites)", "mnist": "supp. B.2",
                "fashion-mnist": "supp. B.3", "chairs": "supp. B.4"}[dataset]
    dsprites = "B.1" in appendix
    if key == "cont":
        return {"mnist": "Table 3", "fashion-mnist": "Table 4"}.get(dataset, "Table 1" if dsprites else "ours (see PRESETS)")
    return ("Table 1" + ("" if dsprites else " (not given for this data set)")) if key == "beta_l" else appendix

def build_parser(dataset="mnist"):
    p = runs.parser("cascadevae.py", "CascadeVAE (Jeong & Song 2019): train or evaluate. Defaults shown are "
                    f"the supp. B preset for --dataset {dataset}; flags override.")
    p.add_argument("--dataset", choices=sorted(DATA_SOURCES), help="selects data and supp. B preset (default mnist)")
    p.add_argument("--cont", type=int, help="number of continuous latent units m")
    p.add_argument("--disc", type=int, help="number S of discrete configurations (one categorical variable)")
    p.add_argument("--no-discrete", action="store_true", help="ablation CascadeVAE-C: no discrete variable (Table 1 rows: --cont 10 --beta-l 1, or --cont 5 --beta-l 0.7)")
    p.add_argument("--beta-h", type=float, help="beta_h of the cascade")
    p.add_argument("--beta-l", type=float, help="beta_l a relieved dim gets (Table 1)")
    p.add_argument("--r", type=int, help="cascade period r: one dim is relieved every r iterations (sec. 6)")
    p.add_argument("--t-d", type=int, help="warm-up t_d: the alternating step runs for t > t_d (Algorithm 1)")
    p.add_argument("--schedule", choices=["paper", "code"], help="cascade as in Algorithm 1 (paper) or the authors' code")
    p.add_argument("--lam", type=float, help="lam' of eq. 6, per unordered same-class pair (supp. B)")
    p.add_argument("--no-cascade", action="store_true", help="ablation CascadeVAE-D: one --beta for every dim (Table 1)")
    p.add_argument("--beta", type=float, help="with --no-cascade: the single beta (Table 1 uses 7.0 for m = 6)")
    p.add_argument("--lr", type=float, help="Adam learning rate")
    p.add_argument("--batch-size", type=int, help="images per update")
    p.add_argument("--iterations", type=int, help="training length in updates (supp. B's unit)")
    p.add_argument("--traversal-range", type=float, metavar="R",
                   help="traversal figures over (-R, R) (default: dSprites Figs. 3/5: 1.5 and 1.2; else Figs. 8-10: 2)")
    p.add_argument("--net", choices=["jeong-song", "dupont"],
                   help="32x32 encoder: supp. B Table 2 (32-32-64 channels) or Dupont's (32-64-64)")
    runs.add_run_flags(p, "cascadevae", "data folder (torchvision layout), or the image folder for chairs")
    if dataset in PRESETS:  # --help shows this data set's preset value of each flag and its table
        runs.show_defaults(p, DEFAULTS, PRESETS[dataset], {k: preset_source(dataset, k) for k in PRESETS[dataset]})
    return p

def make_config(argv=None):
    """DEFAULTS <- PRESETS[dataset] <- the flags given; on --resume, the run's own config
    <- the flags that only change how it goes on (runs from before --net used Dupont's
    32x32 encoder). Validated before anything is written."""
    argv = sys.argv[1:] if argv is None else list(argv)
    flags = vars(build_parser(runs.dataset_of(argv, DEFAULTS["dataset"])).parse_args(argv))
    if "resume" in flags:
        stored = runs.stored_config(flags, "cascadevae", legacy=dict(net="dupont"))
        cfg = runs.resumed_config(stored, flags, DEFAULTS, DATA_SOURCES, "cascadevae", flags.get("force_resume", False))
    else:
        cfg = runs.use_pretrained(runs.new_config(flags, "cascadevae", DEFAULTS, PRESETS, DATA_SOURCES), "cascadevae")
    validate_config(cfg)
    return cfg


def validate_config(cfg):
    """One ValueError sentence per bad flag combination."""
    runs.validate_run_flags(cfg, ('beta_h', 'beta_l', 'lam', 'beta'))
    beta, cascade = cfg["beta"], not cfg["no_cascade"]
    runs.first_error(
        (cfg["cont"] < 1, f"--cont {cfg['cont']}: CascadeVAE needs at least one continuous unit (m >= 1)."),
        (not cfg["no_discrete"] and cfg["disc"] < 2, f"--disc {cfg['disc']}: the discrete variable needs S >= 2 "
         "configurations (one configuration carries no information); use --no-discrete for CascadeVAE-C."),
        (cfg["lam"] < 0, f"--lam {cfg['lam']} is negative; eq. 6 needs lam' >= 0 (a negative weight rewards "
         "same-class pairs and the assignment is then no longer exact)."),
        (cfg["beta_h"] < 0 or cfg["beta_l"] < 0, "--beta-h and --beta-l must be >= 0 (they weight KL terms)."),
        (cfg["r"] < 1, f"--r {cfg['r']}: the cascade period must be at least 1 iteration."),
        (cfg["t_d"] < 0, f"--t-d {cfg['t_d']}: the warm-up t_d must be >= 0."),
        (not cascade and beta is None,
         "--no-cascade needs --beta B, the single beta of CascadeVAE-D (Table 1 uses 7.0 for m = 6)."),
        (cascade and beta is not None, "--beta is the single beta of --no-cascade (CascadeVAE-D); "
         "for the cascade set --beta-h and --beta-l instead."),
        (beta is not None and beta < 0, f"--beta {beta} is negative; eq. 1 needs beta >= 0."))

def objective_name(cfg):
    """Which model of the paper the flags select (printed and saved with the run)."""
    # sec. 6: "if t_d > MAXITER, the pseudocode trains CascadeVAE-C"
    never = not cfg["no_discrete"] and cfg["t_d"] >= cfg["iterations"]
    discrete = not cfg["no_discrete"] and not never
    if cfg["no_cascade"]:
        name = "CascadeVAE-D (eq. 5-6, one beta)" if discrete else "beta-VAE (eq. 1)"
    else:
        name = "CascadeVAE (eq. 5-6, Algorithm 1)" if discrete else "CascadeVAE-C (eq. 1 with information cascading)"
    return name + (" (t_d >= iterations: the alternating step never runs, sec. 6)" if never else "")

# ---------------------------------------------------------------------------
# main: parse, data, model, optimiser, restore, train, evaluate, save
# ---------------------------------------------------------------------------

def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    with runs.errors_as_sentences("cascadevae.py"):
        cfg = make_config(argv)
        device = nets.to_device(cfg["device"])
        if cfg["eval_only"]:                                  # --eval-only / --pretrained: no training
            runs.check_eval_folder(cfg, "cascadevae")
            model, step = load_for_evaluation(cfg, device)
            nets.set_precision(model, cfg["precision"], device)
            print("config (the checkpoint's own settings):\n" + runs.format_config(cfg))
            with runs.staged_evaluation(cfg, "cascadevae", eval_config=cfg) as out:
                res = evaluate(model, cfg, device, step, out, log_path=runs.training_log(cfg))
            runs.print_summary(res, cfg["out"])
            return res
        print("config:\n" + runs.format_config(cfg))
        runs.check_out_dir(cfg["out"], new_run=not cfg["resume"], overwrite=cfg["overwrite"])
        ds = data.load_for(cfg, cfg["train_split"])
        total = runs.num_iterations(cfg, len(ds))
        runs.seed_everything(cfg["seed"])
        # On a CPU channels-last weights (nets.place) matter most here: u decodes B*S images every step.
        model = nets.place(CascadeVAE(ds.image_size, cfg["cont"], 0 if cfg["no_discrete"] else cfg["disc"],
                                      cfg["net"]), device)
        nets.set_precision(model, cfg["precision"], device)   # the networks only; every equation in fp32
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
        scaler = nets.grad_scaler(cfg["precision"], device)   # fp16's loss scaling; a no-op in fp32 and bf16
        runs.open_run_folder(cfg)                             # locked; --overwrite clears the old run now
        step, window = runs.restore(cfg, model, optimizer, "cascadevae", total, scaler) if cfg["resume"] else (0, None)
        cfg = runs.save_config(cfg, iterations_total=total, objective=objective_name(cfg), train_size=len(ds))
        print(f"{cfg['objective']} on {cfg['dataset']} ({len(ds)} images {ds.image_size}), {total} updates, "
              f"{nets.count_parameters(model)} parameters, device {device}, run folder {cfg['out']}")
        if not cfg["no_discrete"] and cfg["t_d"] >= total:
            print(f"note: --t-d {cfg['t_d']} >= {total} iterations, so the alternating step never runs and this "
                  "run trains CascadeVAE-C (sec. 6); lower --t-d to learn the discrete factor.")
        with runs.TrainLog(cfg, log_columns(cfg), step, total, device, "cascadevae", window, argv,
                           nan_hint="lower --lr, or check the input data", scaler=scaler) as log:
            while True:  # training slices, with the --eval-every evaluations (metrics only) between them
                if log.eval_due(step):
                    with runs.rng_isolated():                 # the training RNG streams stay untouched
                        log.record_eval(step, evaluate(model, cfg, device, step))
                if step >= total or log.stopped:
                    break
                step = train(model, optimizer, scaler, ds, cfg, step, log.next_stop(step), log, device)
        if not log.finish() or cfg["no_eval"]:
            return None
        with runs.staged_evaluation(cfg, "cascadevae") as out:
            res = evaluate(model, cfg, device, step, out, log_path=os.path.join(cfg["out"], "log.csv"))
        runs.print_summary(res, cfg["out"])
        return res


if __name__ == "__main__":
    main()
