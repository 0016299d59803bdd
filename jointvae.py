"""JointVAE: joint continuous and discrete latents with controlled capacity.

Emilien Dupont, "Learning Disentangled Joint Continuous and Discrete Representations",
NeurIPS 2018. Author's code: https://github.com/Schlumberger/joint-vae (MIT); his released
weights load with `--eval-only --checkpoint model.pt` (load_official_weights).

    python jointvae.py --dataset mnist --pretrained     # released weights: figures in seconds
    python jointvae.py --dataset mnist                  # train with the App. C.1 preset

Equation -> code
    sec 3.1 Gaussian q(z|x), N(0, I) prior, reparameterisation ..... reparameterize, kl_normal
    eq. 8   Gumbel-softmax relaxation of q(c|x) ...................... sample_gumbel_softmax
    Fig. 1  encoder -> (mu, logvar, alpha), decoder p(x|z, c) ........ JointVAE
    eq. 5   KL(q(z,c|x)||p(z,c)) = KL(q(z|x)||p(z)) + KL(q(c|x)||p(c)) jointvae_loss (two KL terms)
    App. A.2 KL(q(c|x)||Uniform(K)) = log K - H(q(c|x)) <= log K .... kl_categorical_uniform
    App. C  C_z, C_c increased linearly; C_c <= sum_i log K_i ....... linear_capacity, jointvae_loss
    eq. 7   recon + gamma|KL_z - C_z| + gamma|KL_c - C_c| ............ jointvae_loss
    eq. 1, 3, 6  the baselines (beta-VAE, CC-beta-VAE, joint beta-VAE) jointvae_loss(beta=, c_disc=)
    sec 4.3 digit type read off q(c|x): 88.7 % on MNIST ............. evaluate
    sec 4.2, Fig. 7; Figs. 2, 4; App. G  KL per unit, traversals ...... save_figures
    App. C  per-dataset hyperparameters ............................. PRESETS

Shapes: B batch, D continuous units, K categories of one discrete variable (several: K_1..K_V,
Ktot = sum_i K_i), N evaluated images, C x H x W image. Where this file departs from the
paper or the author's code, a `DEVIATION:` comment says so at that line.
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

# ---------------------------------------------------------------------------
# Model: encoder -> (mu, logvar, alpha^(i)), reparameterised sample, decoder (sec. 3, Fig. 1)
# ---------------------------------------------------------------------------

def reparameterize(mu, logvar):
    """sec. 3.1: z = mu + sigma * eps, eps ~ N(0, I), so gradients flow to mu, sigma.

    mu, logvar (B, D) -> z (B, D), sigma = exp(logvar / 2).
    """
    # BEGIN SOLUTION: sec. 3.1 reparameterisation, return z = mu + sigma * eps (B, D)
    eps = torch.randn_like(mu)                 # (B, D)
    return mu + torch.exp(0.5 * logvar) * eps  # (B, D)
    # END SOLUTION

def sample_gumbel_softmax(logits, temperature, eps=1e-12):
    """eq. 8: y_k = exp((log alpha_k + g_k)/tau) / sum_i exp((log alpha_i + g_i)/tau).

    logits (B, K) parameterise alpha = softmax(logits); g_k ~ Gumbel(0, 1) i.i.d.
    As tau -> 0 the sample tends to the one-hot argmax_k (log alpha_k + g_k), which
    is an exact draw from Categorical(alpha) (the Gumbel-max trick). Returns y (B, K),
    differentiable in logits; eps guards the two logarithms of the Gumbel noise.
    """
    # BEGIN SOLUTION: eq. 8, return the relaxed sample y (B, K) on the simplex
    u = torch.rand_like(logits)                         # (B, K) uniform(0, 1)
    g = -torch.log(-torch.log(u + eps) + eps)           # (B, K) Gumbel(0, 1)
    # DEVIATION: log alpha = log_softmax(logits); the author's code takes log(softmax + 1e-12).
    # They differ only where alpha < ~1e-10.
    log_alpha = torch.log_softmax(logits, dim=-1)       # (B, K)
    return torch.softmax((log_alpha + g) / temperature, dim=-1)  # (B, K) on the simplex
    # END SOLUTION

class JointVAE(nn.Module):
    """q(z|x) = N(mu, diag sigma^2), q(c_i|x) = g(alpha^(i)); p(x|z, c) Bernoulli (Fig. 1)."""

    def __init__(self, image_size, cont, disc, temperature=0.67):
        super().__init__()
        self.cont, self.disc, self.temperature = int(cont), [int(k) for k in disc], float(temperature)
        # One head carries [mu (D) | logvar (D) | logits^(1) (K_1) | ... ]: the split below
        # is what Dupont's separate fc_mean / fc_log_var / fc_alphas layers compute.
        self.encoder = nets.Encoder(image_size, 2 * self.cont + sum(self.disc))
        self.decoder = nets.Decoder(image_size, self.cont + sum(self.disc))

    def encode(self, x):
        """x (B, C, H, W) -> mu (B, D), logvar (B, D), [logits of alpha^(i) (B, K_i)]."""
        h = self.encoder(x)                               # (B, 2D + Ktot)
        mu, logvar = h[:, :self.cont], h[:, self.cont:2 * self.cont]  # (B, D), (B, D)
        logits = list(torch.split(h[:, 2 * self.cont:], self.disc, dim=1)) if self.disc else []
        return mu, logvar, logits                         # logits: each (B, K_i)

    def latent(self, mu, logvar, logits):
        """Training: reparameterised z and Gumbel-softmax c (eq. 8). Eval: mean z, one-hot argmax c."""
        if self.training:
            parts = [reparameterize(mu, logvar)]
            parts += [sample_gumbel_softmax(l, self.temperature) for l in logits]
        else:
            parts = [mu] + [F.one_hot(l.argmax(dim=-1), l.shape[-1]).to(mu.dtype) for l in logits]
        return torch.cat(parts, dim=1)                    # (B, D + Ktot): z first, then c^(1..V)

    def decode(self, latent):
        return self.decoder(latent)                       # (B, C, H, W) logits

    def forward(self, x):
        mu, logvar, logits = self.encode(x)
        latent = self.latent(mu, logvar, logits)          # (B, D + Ktot)
        alphas = [torch.softmax(l, dim=-1) for l in logits]  # each (B, K_i): q(c_i|x)
        return dict(x_logits=self.decode(latent), mu=mu, logvar=logvar, alphas=alphas, latent=latent)

def load_official_weights(model, state_dict):
    """Map the JointVAE author's released state_dict onto our modules.

    Author's names -> ours: img_to_features.* -> encoder.features.*,
    features_to_hidden.0 -> encoder.to_hidden.0, [fc_mean; fc_log_var; fc_alphas.i]
    stacked row-wise -> encoder.head (the layout `encode` splits), latent_to_features.*
    -> decoder.to_features.*, features_to_img.* -> decoder.features.* (their final
    sigmoid is our Bernoulli-with-logits, so the last conv's weights carry over as is).
    """
    n_disc = len([k for k in state_dict if k.startswith("fc_alphas.") and k.endswith(".weight")])
    cont = state_dict["fc_mean.weight"].shape[0] if "fc_mean.weight" in state_dict else 0
    disc = [state_dict[f"fc_alphas.{i}.weight"].shape[0] for i in range(n_disc)]
    if cont != model.cont or disc != model.disc:
        raise ValueError(f"the released weights have {cont} continuous units and discrete sizes {disc}; "
                         f"run with --cont {cont} --disc {' '.join(map(str, disc))}.")
    ours = {}
    for key, value in state_dict.items():
        for theirs, mine in (("img_to_features.", "encoder.features."),
                             ("features_to_hidden.", "encoder.to_hidden."),
                             ("latent_to_features.", "decoder.to_features."),
                             ("features_to_img.", "decoder.features.")):
            if key.startswith(theirs):
                ours[mine + key[len(theirs):]] = value
    heads = (["fc_mean", "fc_log_var"] if cont else []) + [f"fc_alphas.{i}" for i in range(n_disc)]
    ours["encoder.head.weight"] = torch.cat([state_dict[h + ".weight"] for h in heads], dim=0)  # (2D+Ktot, 256)
    ours["encoder.head.bias"] = torch.cat([state_dict[h + ".bias"] for h in heads], dim=0)      # (2D+Ktot,)
    runs.load_state_dict(model, ours, "the author's state_dict")
    return model

# ---------------------------------------------------------------------------
# Loss: eq. 7 (and the baselines eq. 1, 3, 6), eq. 5 split, App. C capacities
# ---------------------------------------------------------------------------

def kl_normal(mu, logvar):
    """KL(N(mu, sigma^2) || N(0, 1)) per unit, closed form: (B, D).

    = 1/2 (mu^2 + sigma^2 - 1 - log sigma^2); summed over units it is
    KL(q(z|x)||p(z)) for the factorised Gaussian of sec. 3.1.
    """
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)  # (B, D), >= 0

def kl_categorical_uniform(probs):
    """KL(q(c|x) || Uniform(K)) = sum_k alpha_k log(alpha_k K) = log K - H(alpha): (B,).

    App. C: bounded by log K (reached at a one-hot alpha). Per eq. 5 / App. A.2 the
    joint KL splits, so the discrete channel's KL is this summed over variables.

    alpha log(alpha + 1e-12), as in the author's code, not the exact 0 log 0 = 0: eq. 7
    with C_c = log K drives alpha to one-hot until softmax underflows to exactly 0, and
    there d(alpha log alpha)/d alpha = log 0 = -inf turns the gradient into NaN (seen on
    Fashion-MNIST at ~12k updates). The 1e-12 changes the value by < 1e-11 nats.
    """
    # BEGIN SOLUTION: App. A.2, return KL(q(c|x) || Uniform(K)) per sample (B,)
    k = probs.shape[-1]
    return (probs * torch.log(probs + 1e-12)).sum(dim=-1) + math.log(k)  # (B,)
    # END SOLUTION

def linear_capacity(step, c_min, c_max, num_iters):
    """App. C: C increased linearly from c_min to c_max over num_iters updates, then held (a float)."""
    # BEGIN SOLUTION: App. C capacity schedule, return C at update `step` (a float)
    return c_min + (c_max - c_min) * min(float(step) / float(num_iters), 1.0)
    # END SOLUTION

def jointvae_loss(x, x_logits, mu, logvar, alphas, step, gamma, c_cont, c_disc, beta=None):
    """The loss to minimise (the negative of the paper's objective) and its terms.

    x (B, C, H, W) in [0, 1]; x_logits (B, C, H, W); mu, logvar (B, D);
    alphas: list of (B, K_i) probabilities (empty: continuous only);
    step: the update number t >= 1 the capacities are evaluated at;
    c_cont, c_disc: (C_min, C_max, iterations) of the linear schedules (App. C);
    beta: None -> capacity objective (eq. 7, or eq. 3 without discrete latents);
          a number -> beta-weighted KLs, no capacity (eq. 1, or eq. 6 with alphas).
    Returns a dict (no host sync): 0-dim tensors loss, recon (-(1/B) sum_i log p(x_i|z_i, c_i),
    summed over pixels, averaged over channels), kl_cont = KL(q(z|x)||p(z)) and kl_disc = KL(q(c|x)||p(c)), each averaged
    over the batch; kl_cont_units (D,) and kl_disc_vars (V,), their terms per unit / variable;
    and the capacities c_cont = C_z, c_disc = C_c as plain floats (they depend on step only).
    """
    # BEGIN SOLUTION: eq. 7 (eq. 1, 3, 6 with beta), return dict(loss, recon, kl_cont, kl_disc, ...)
    batch, channels = x.shape[0], x.shape[1]
    # -E_q[log p(x|z,c)] with Bernoulli p: cross-entropy summed over pixels (H*W) and
    # averaged over the batch AND the channels, as the author's code computes it
    # (BCE(recon.view(-1, H*W), x.view(-1, H*W)) * H*W): the scale App. C's gamma and C were
    # tuned for. One channel: the plain per-image sum; RGB (CelebA): 1/3 of it.
    # DEVIATION: BCE on the decoder's logits, where the author applies a sigmoid and then BCE:
    # equal in exact arithmetic and stable, but his float32 sigmoid saturates to 0 or 1 and
    # BCE clamps log at -100, so on a wrongly saturated pixel the two differ (his released
    # dSprites weights on 2,048 `shapes` images: 41.66 nats/image both ways).
    # DEVIATION: the author also divides the whole loss by H*W before the backward pass; only
    # Adam's eps (1e-8) sees that constant factor, so we leave it out.
    recon = F.binary_cross_entropy_with_logits(x_logits, x, reduction="sum") / (batch * channels)  # eq. 7, 1st term

    # eq. 5: the joint KL splits into a continuous and a discrete part (App. A.2).
    kl_cont_units = kl_normal(mu, logvar).mean(dim=0)                     # (D,) batch mean per unit
    kl_cont = kl_cont_units.sum()                                        # KL(q(z|x)||p(z)), summed over units
    if alphas:
        kl_disc_vars = torch.stack([kl_categorical_uniform(a).mean(dim=0) for a in alphas])  # (V,)
    else:
        kl_disc_vars = x.new_zeros(0)                                    # (0,)
    kl_disc = kl_disc_vars.sum()                                         # KL(q(c|x)||p(c)), summed over variables

    # App. C: linear capacity schedules; C_c is clipped at its maximum sum_i log K_i,
    # the largest KL a product of uniform categoricals can be pulled to.
    c_z = linear_capacity(step, *c_cont)
    # Why C_c must rise slowly: KL(q(c|x)||Uniform(K)) = log K - H(q(c|x)) is met by ANY one-hot
    # alpha, the same one for every image included (I(x; c) = 0). App. C's ramps reach the
    # log K clip after ~11,500 updates, by when the encoder spreads images over categories;
    # a ramp squeezed into 1,500 updates gave a constant code and chance accuracy.
    c_c = min(linear_capacity(step, *c_disc), sum(math.log(a.shape[-1]) for a in alphas))

    if beta is not None:
        # eq. 1 (continuous only) / eq. 6 (joint): recon + beta*KL_z (+ beta*KL_c); no capacity.
        loss = recon + beta * kl_cont + beta * kl_disc          # eq. 1 / eq. 6, 0-dim, minimised
    else:
        # eq. 7: recon + gamma*|KL(q(z|x)||p(z)) - C_z| + gamma*|KL(q(c|x)||p(c)) - C_c|
        # (eq. 3, CC-beta-VAE, when there are no discrete latents: the second term is absent).
        # One gamma for both capacity terms (eq. 7 and the author's code); 0-dim, minimised.
        loss = recon + gamma * (kl_cont - c_z).abs()            # eq. 7: + gamma*|KL(q(z|x)||p(z)) - C_z|
        if alphas:
            loss = loss + gamma * (kl_disc - c_c).abs()         # eq. 7: + gamma*|KL(q(c|x)||p(c)) - C_c|
    return dict(loss=loss, recon=recon, kl_cont=kl_cont, kl_disc=kl_disc,
                c_cont=c_z, c_disc=c_c,
                kl_cont_units=kl_cont_units, kl_disc_vars=kl_disc_vars)
    # END SOLUTION

# ---------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------

def train(model, optimizer, scaler, ds, cfg, step, total, log, device):
    """Minimise eq. 7 from update `step` to `total` (or until `log` says stop); returns the
    step reached. The capacities are evaluated at update t = 1, 2, ... (the author's
    `num_steps`)."""
    batches = data.batches(ds, cfg["batch_size"], seed=cfg["seed"], start_step=step)  # a function of (seed, step)
    model.train()
    while step < total:
        _, x = next(batches)                                  # (B, C, H, W) in [0, 1]
        x = x.to(device, non_blocking=True)
        step += 1
        out = model(x)
        terms = jointvae_loss(x, out["x_logits"], out["mu"], out["logvar"], out["alphas"],
                              step, cfg["gamma"], cfg["c_cont"], cfg["c_disc"], cfg["beta"])
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(terms["loss"]).backward()                # fp16: loss scaled so small gradients survive
        scaler.step(optimizer)                                # fp32, bf16: plain optimizer.step()
        scaler.update()
        mean = {k: terms[k] for k in ("loss", "recon", "kl_cont", "kl_disc")}
        mean.update(kl_z=terms["kl_cont_units"], kl_c=terms["kl_disc_vars"])
        if log.update(step, model, optimizer, mean, now=dict(c_cont=terms["c_cont"], c_disc=terms["c_disc"])):
            break
    return step


def log_columns(cfg):
    return (["loss", "recon", "kl_cont", "kl_disc", "c_cont", "c_disc"]
            + [f"kl_z{j}" for j in range(cfg["cont"])] + [f"kl_c{i}" for i in range(len(cfg["disc"]))])


# ---------------------------------------------------------------------------
# Evaluation and figures
# ---------------------------------------------------------------------------

def encode_dataset(model, ds, indices, device, batch_size=512):
    """Posterior parameters of every indexed image: mu, logvar (N, D), [alpha^(i) (N, K_i)]."""
    model.eval()

    def encode(x):                                        # x (B, C, H, W)
        mu, logvar, logits = model.encode(x)              # (B, D), (B, D), [(B, K_i)]
        return (mu, logvar, *[torch.softmax(l, dim=-1) for l in logits])

    mu, logvar, *alphas = scoring.encode_batches(encode, ds, indices, device, batch_size)
    return mu, logvar, alphas                             # (N, D), (N, D), [(N, K_i)]


def joint_code(alphas, disc):
    """argmax of each q(c_i|x), combined into one configuration index in [0, prod K_i)."""
    code = torch.zeros(alphas[0].shape[0], dtype=torch.long)  # (N,)
    for a, k in zip(alphas, disc):
        code = code * k + a.argmax(dim=1)
    return code

@torch.no_grad()
def evaluate(model, cfg, device, step, out=None, log_path=None):
    """Encode the evaluation split (or --eval-samples of it) and write metrics.json and the
    figures into `out`. NOTE: z is the posterior mean and c the one-hot argmax of alpha, as
    the author's code does in eval mode.
    out=None (--eval-every): the metrics only, returned, nothing written.
    """
    t0 = time.perf_counter()
    ds = data.load_for(cfg, cfg["eval_split"])
    indices = scoring.eval_indices(len(ds), cfg["eval_samples"], cfg["seed"])  # (N,)
    n = len(indices)
    mu, logvar, alphas = encode_dataset(model, ds, indices, device, cfg["eval_batch_size"])
    reasons, kl_units = {}, metrics.kl_per_unit(mu, logvar) if cfg["cont"] else np.zeros(0)  # (D,) nats
    res = dict(method="jointvae", objective=objective_name(cfg), dataset=cfg["dataset"],
               eval_split=cfg["eval_split"], n_eval=n, step=step, device=str(device),
               kl_per_unit=[float(v) for v in kl_units], kl_cont_total=float(np.sum(kl_units)),
               kl_disc_per_var=[float(kl_categorical_uniform(a).mean()) for a in alphas])
    # nats per image, summed over pixels; z = mu, c = its most likely value (eval mode)
    res["recon_eval"] = float(scoring.bernoulli_nll(lambda x, i: model(x)["x_logits"], ds, indices[:2048], device,
                                                    cfg["eval_batch_size"]).mean())
    disc_codes = torch.stack([a.argmax(dim=1) for a in alphas], dim=1) if alphas else None  # (N, V)
    code = joint_code(alphas, cfg["disc"]) if alphas else None                # (N,) the joint code
    labels = ds.labels[indices] if ds.labels is not None else None          # (N,)
    res.update(scoring.accuracy_scores(code, labels, reasons, "no discrete latent (--disc is empty)"))  # sec. 4.3
    # One order of the codes for every per-code figure: row k the code matched to class k.
    class_names = data.CLASS_NAMES.get(cfg["dataset"])
    code_rows = viz.code_order(code, labels, int(np.prod(cfg["disc"])), class_names)[:2] if alphas else None
    if res["accuracy_hungarian"] is not None and out is not None:
        viz.save_confusion(code, labels, int(np.prod(cfg["disc"])), class_names, os.path.join(out, "confusion.png"),
                           "argmax q(c|x)", "discrete code vs class (sec. 4.3)",
                           accuracy={"Hungarian": res["accuracy_hungarian"], "majority": res["accuracy_majority"]})

    def encode(idx):  # FactorVAE vote images: (mu, joint code of c) in large no-grad batches
        v_mu, _, v_alphas = encode_dataset(model, ds, idx, device, 4 * cfg["eval_batch_size"])
        return v_mu, joint_code(v_alphas, cfg["disc"]) if v_alphas else None

    scores, mig_all = scoring.factor_scores(
        ds, indices, mu if cfg["cont"] else torch.zeros(n, 0), logvar if cfg["cont"] else None,
        kl_units if cfg["cont"] else None, encode, cfg["metric_votes"], cfg["seed"], reasons,
        discrete_codes=code, mig_discrete=disc_codes)
    res.update(scores, null_reasons=reasons, eval_seconds=round(time.perf_counter() - t0, 2))
    # The discrete value most images are assigned to: the continuous traversals hold c there.
    typical = int(torch.bincount(code).argmax()) if alphas else 0
    if out is None:                                           # --eval-every: the metrics only
        return res
    save_figures(model, cfg, ds, indices, kl_units, typical, device, out, log_path, code_rows)
    viz.save_factor_figures(out, mig_all, mu, ds, indices, data.SHAPE_NAMES if scoring.is_dsprites_grid(ds) else None)
    runs.write_json(os.path.join(out, "metrics.json"), res)
    return res


def save_figures(model, cfg, ds, indices, kl_units, typical, device, out, log_path=None, code_rows=None):
    """Reconstructions, samples per discrete value (Fig. 4a MNIST, 4b Fashion-MNIST), ranked
    traversals of the informative units (Fig. 7b, App. G; also as traversals.gif), Fig. 2's
    traversals from random settings, the discrete traversal (Fig. 4c) and KL during training
    (Fig. 7a). code_rows = (codes, row labels): the order of the per-code rows (the
    confusion matrix's, viz.code_order); default 0..K-1."""
    model.eval()
    decode = lambda latent: torch.sigmoid(model.decode(latent.to(device))).cpu()  # noqa: E731
    x = ds.batch(indices[:8]).to(device)                                            # (8, C, H, W)
    viz.save_reconstructions(x, torch.sigmoid(model(x)["x_logits"]), os.path.join(out, "reconstructions.png"))
    d, disc, n_cols = cfg["cont"], cfg["disc"], 10
    g = torch.Generator().manual_seed(cfg["seed"])
    all_configs = _disc_configs(disc)                                               # (prod K, Ktot)
    order, code_labels = code_rows or (list(range(len(all_configs))), [f"c={i}" for i in range(len(all_configs))])
    configs = [all_configs[k] for k in order[:20]]                                  # rows: discrete values
    fig4 = "Fig. 4b" if cfg["dataset"] == "fashion-mnist" else "Fig. 4a"
    # App. G: traversal values Phi^-1(0.05) .. Phi^-1(0.95), rows ranked by KL (Fig. 7b).
    ppf = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, n_cols))  # (cols,)
    if disc:
        # Rows fix the discrete code: Fig. 4a/b with z ~ p(z) = N(0, I) across the row; Fig. 4c
        # with the most informative unit traversed.
        top = int(np.argmax(kl_units)) if d else 0
        viz.save_code_figures(decode, out, torch.randn(n_cols, d, generator=g), ppf, top, configs, code_labels[:20],
                              (f"samples, discrete code fixed per row ({fig4})",
                               f"discrete value per row x z{top} (most informative) traversed (Fig. 4c)"
                               if d else "discrete value per row (Fig. 4c)"))
    if d:
        # Only the informative units (KL > 0.1 nats, at least one): a dead unit's row is blank.
        units, n_inactive = viz.informative_units(kl_units, metrics.PRUNE_THRESHOLD)
        rows, labels = viz.unit_traversals(ppf, kl_units, all_configs[typical], units)  # (R, cols, D+Ktot)
        note = viz.inactive_note(n_inactive, metrics.PRUNE_THRESHOLD)
        viz.save_traversal(decode, rows, os.path.join(out, "traversals.png"), row_labels=labels,
                           col_labels=viz.value_labels(ppf),
                           title="continuous traversals ranked by KL (Fig. 7b, App. G), "
                                 f"{'at ' + code_labels[order.index(typical)] if disc else 'no discrete code'}"
                                 + (f"; {note}" if note else ""))
        viz.save_traversal_gif(decode, rows[:10], os.path.join(out, "traversals.gif"), ppf, labels[:10])
        # Fig. 2: each block varies one unit (the 3 most informative) across the columns;
        # each row is a fixed random setting of the other latents (z ~ p(z), a random c).
        blocks, labels = [], []
        for j in np.argsort(-np.asarray(kl_units))[:3]:
            for r in range(3):
                z = torch.randn(1, d, generator=g).expand(n_cols, -1).clone()      # (cols, D)
                z[:, j] = ppf
                c = all_configs[int(torch.randint(len(all_configs), (1,), generator=g))]
                blocks.append(torch.cat([z, c.expand(n_cols, -1)], dim=1))           # (cols, D+Ktot)
                labels.append(f"z{j}, setting {r + 1}")
        viz.save_traversal(decode, torch.stack(blocks), os.path.join(out, "traversals_fig2.png"),
                           row_labels=labels, col_labels=viz.value_labels(ppf),
                           title="one unit varied per block, rows: random settings (Fig. 2)")
    clip = sum(math.log(k) for k in disc)
    viz.save_log_figures(log_path, out, "KL per unit during training (Fig. 7a)",
                         hlines={f"C_c clip: sum log K = {clip:.2f}": clip} if disc else None)

def _disc_configs(disc):
    """All joint one-hot configurations of the discrete variables: list of (Ktot,) tensors."""
    if not disc:
        return [torch.zeros(0)]
    configs = []
    for idx in range(int(np.prod(disc))):
        parts, rest = [], idx
        for k in reversed(disc):
            rest, r = divmod(rest, k)
            parts.insert(0, F.one_hot(torch.tensor(r), k).float())
        configs.append(torch.cat(parts))
    return configs

def load_for_evaluation(cfg, device):
    """--eval-only / --pretrained: the model of the checkpoint (ours, or the author's
    state_dict, whose head shapes give the latent sizes) and its step (None for his)."""
    path = runs.checkpoint_path(cfg["checkpoint"])
    ckpt = runs.load_checkpoint(path)
    if isinstance(ckpt, dict) and "img_to_features.0.weight" in ckpt:
        cfg["cont"] = int(ckpt["fc_mean.weight"].shape[0]) if "fc_mean.weight" in ckpt else 0
        cfg["disc"] = [int(ckpt[f"fc_alphas.{i}.weight"].shape[0])
                       for i in range(sum(1 for k in ckpt if k.startswith("fc_alphas.") and k.endswith(".weight")))]
        state, step = None, None
    else:
        runs.check_training_checkpoint(ckpt, path, "jointvae")
        for key in TRAINED_WITH:                              # the settings the weights were trained with
            cfg[key] = ckpt["config"].get(key, cfg[key])
        state, step = ckpt["model"], int(ckpt["step"])
    model = JointVAE(data.image_size_for(cfg), cfg["cont"], cfg["disc"], cfg["temperature"])
    if state is None:
        load_official_weights(model, ckpt)
    else:
        runs.load_state_dict(model, state, path)
    return nets.place(model, device), step


# ---------------------------------------------------------------------------
# Presets and arguments
# ---------------------------------------------------------------------------

# Dupont (2018), App. C. C_z / C_c are (C_min, C_max, iterations) of the linear schedule.
# DEVIATION: the paper's epochs become epochs * floor(N / batch) updates, the unit of the
# capacity schedules (data.batches drops the partial last batch).
PRESETS = {
    "mnist": dict(                       # App. C.1 MNIST
        cont=10, disc=[10],              # 10 continuous, one 10-dim discrete
        lr=5e-4, batch_size=64,          # Adam 5e-4, batch 64
        epochs=100, gamma=30.0,          # 100 epochs, gamma 30
        c_cont=[0.0, 5.0, 25000],        # C_z: 0 -> 5 in 25,000 iterations
        c_disc=[0.0, 5.0, 25000],        # C_c: 0 -> 5 in 25,000 (clipped at log 10 = 2.30)
    ),
    "fashion-mnist": dict(               # App. C.2 FashionMNIST
        cont=10, disc=[10],
        lr=5e-4, batch_size=64,
        epochs=100, gamma=100.0,         # gamma 100
        c_cont=[0.0, 5.0, 50000],        # C_z: 0 -> 5 in 50,000
        c_disc=[0.0, 10.0, 50000],       # C_c: 0 -> 10 in 50,000 (clipped at log 10)
    ),
    "chairs": dict(                      # App. C.3 Chairs (a folder of 64x64 images)
        cont=32, disc=[2, 2, 2],         # 32 continuous, 3 binary discrete
        lr=1e-4, batch_size=64,
        epochs=100, gamma=300.0,
        c_cont=[0.0, 30.0, 100000],
        c_disc=[0.0, 5.0, 100000],       # clipped at 3 log 2 = 2.08
    ),
    "celeba": dict(                      # App. C.4 CelebA (a folder of 64x64 RGB images)
        cont=32, disc=[10],
        lr=5e-4, batch_size=64,
        epochs=100, gamma=100.0,
        c_cont=[0.0, 50.0, 100000],
        c_disc=[0.0, 10.0, 100000],
    ),
    "dsprites": dict(                    # App. C.5 dSprites
        cont=6, disc=[3],                # 6 continuous, one 3-dim discrete (sec. 4.1)
        lr=5e-4, batch_size=64,
        epochs=30, gamma=150.0,
        c_cont=[0.0, 40.0, 300000],
        c_disc=[0.0, 1.1, 300000],       # 1.1 = log 3 (rounded up): C_c at its maximum
    ),
}
PRESETS["shapes"] = dict(PRESETS["dsprites"])  # procedural dSprites: the dSprites preset
PRESET_SOURCES = {"mnist": "App. C.1", "fashion-mnist": "App. C.2", "chairs": "App. C.3", "celeba": "App. C.4",
                  "dsprites": "App. C.5", "shapes": "App. C.5 (dSprites)"}

# The paper reports MNIST accuracy on test data (sec. 4.3); factor data sets are one grid.
DATA_SOURCES = data.sources("mnist", "fashion-mnist", "dsprites", "shapes", "chairs", "celeba")

DEFAULTS = dict(
    dataset="mnist", cont=10, disc=[10], temperature=0.67, gamma=30.0, c_cont=[0.0, 5.0, 25000],
    c_disc=[0.0, 5.0, 25000], beta=None, lr=5e-4, batch_size=64, epochs=100, iterations=None, save_every=5000,
    **runs.RUN_DEFAULTS,
)
# The settings of a trained model that --eval-only takes from its checkpoint.
TRAINED_WITH = ("cont", "disc", "temperature", "gamma", "c_cont", "c_disc", "beta", "train_split",
                "lr", "batch_size", "epochs", "iterations")


def build_parser(dataset="mnist"):
    p = runs.parser("jointvae.py", "JointVAE (Dupont 2018): train, evaluate, or load the author's weights. "
                    f"Defaults shown are the App. C preset for --dataset {dataset}; flags override.")
    p.add_argument("--dataset", choices=sorted(DATA_SOURCES), help="selects data and App. C preset (default mnist)")
    p.add_argument("--cont", type=int, help="number of continuous latent units D")
    p.add_argument("--disc", type=int, nargs="*", help="categories of each discrete variable, e.g. 10 or 2 2 2; empty = none")
    p.add_argument("--temperature", type=float, help="Gumbel-softmax temperature tau of eq. 8 (the author's code)")
    p.add_argument("--gamma", type=float, help="gamma of eq. 7")
    p.add_argument("--c-cont", type=float, nargs=3, metavar=("MIN", "MAX", "ITERS"), help="C_z schedule")
    p.add_argument("--c-disc", type=float, nargs=3, metavar=("MIN", "MAX", "ITERS"), help="C_c schedule (clipped at sum log K)")
    p.add_argument("--beta", type=float, help="baseline: beta-VAE eq. 1 (no --disc) or eq. 6 (with --disc), no capacity")
    p.add_argument("--lr", type=float, help="Adam learning rate")
    p.add_argument("--batch-size", type=int, help="images per update")
    p.add_argument("--epochs", type=float, help="training length in epochs (paper's unit)")
    p.add_argument("--iterations", type=int, help="training length in updates (overrides --epochs)")
    runs.add_run_flags(p, "jointvae", "data folder (torchvision layout), or the image folder for chairs/celeba")
    if dataset in PRESETS:  # --help shows this data set's preset value of each flag and its appendix
        runs.show_defaults(p, DEFAULTS, PRESETS[dataset], dict.fromkeys(PRESETS[dataset], PRESET_SOURCES[dataset]))
    return p

def make_config(argv=None):
    """DEFAULTS <- PRESETS[dataset] <- the flags given; on --resume, the run's own config
    <- the flags that only change how it goes on. Validated before anything is written."""
    argv = sys.argv[1:] if argv is None else list(argv)
    flags = vars(build_parser(runs.dataset_of(argv, DEFAULTS["dataset"])).parse_args(argv))
    if "resume" in flags:
        stored = runs.stored_config(flags, "jointvae")
        cfg = runs.resumed_config(stored, flags, DEFAULTS, DATA_SOURCES, "jointvae", flags.get("force_resume", False))
    else:
        cfg = runs.use_pretrained(runs.new_config(flags, "jointvae", DEFAULTS, PRESETS, DATA_SOURCES), "jointvae")
    for name in ("c_cont", "c_disc"):                         # (C_min, C_max, ITERS): ITERS counts updates
        c_min, c_max, iters = (float(v) for v in cfg[name])
        if math.isfinite(iters) and iters != int(iters):
            raise ValueError(f"--{name.replace('_', '-')} {c_min:g} {c_max:g} {iters:g}: ITERS counts updates "
                             "and must be a whole number.")
        cfg[name] = [c_min, c_max, int(iters) if math.isfinite(iters) else iters]
    validate_config(cfg)
    return cfg


def validate_config(cfg):
    """One ValueError sentence per bad flag combination."""
    runs.validate_run_flags(cfg, ('temperature', 'gamma', 'beta', 'c_cont', 'c_disc'))
    if cfg["cont"] < 0 or (cfg["cont"] == 0 and not cfg["disc"]):
        raise ValueError("need at least one latent: set --cont >= 1 or give --disc.")
    if any(k < 2 for k in cfg["disc"]):
        raise ValueError(f"--disc {cfg['disc']}: every discrete variable needs at least 2 categories "
                         "(a 1-category variable carries no information).")
    if cfg["gamma"] < 0:
        raise ValueError(f"--gamma {cfg['gamma']} is negative; eq. 7 needs gamma >= 0.")
    if cfg["beta"] is not None and cfg["beta"] < 0:
        raise ValueError(f"--beta {cfg['beta']} is negative; eqs. 1 and 6 need beta >= 0.")
    if cfg["temperature"] <= 0:
        raise ValueError(f"--temperature {cfg['temperature']} must be > 0 (eq. 8 divides by it).")
    for name in ("c_cont", "c_disc"):
        c_min, c_max, iters = cfg[name]
        if c_min < 0 or c_max < c_min or iters <= 0:
            raise ValueError(f"--{name.replace('_', '-')} {cfg[name]}: need 0 <= MIN <= MAX and ITERS > 0.")

def objective_name(cfg):
    """Which equation of the paper the flags select (printed and saved with the run)."""
    if cfg["beta"] is not None:
        return "eq. 6 (joint beta-VAE, no capacity)" if cfg["disc"] else "eq. 1 (beta-VAE)"
    return "eq. 7 (JointVAE)" if cfg["disc"] else "eq. 3 (CC-beta-VAE)"

# ---------------------------------------------------------------------------
# main: parse, data, model, optimiser, restore, train, evaluate, save
# ---------------------------------------------------------------------------

def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    with runs.errors_as_sentences("jointvae.py"):
        cfg = make_config(argv)
        device = nets.to_device(cfg["device"])
        if cfg["eval_only"]:                                  # --eval-only / --pretrained: no training
            runs.check_eval_folder(cfg, "jointvae")
            model, step = load_for_evaluation(cfg, device)
            nets.set_precision(model, cfg["precision"], device)
            print("config (the checkpoint's own settings):\n" + runs.format_config(cfg))
            with runs.staged_evaluation(cfg, "jointvae", eval_config=cfg) as out:
                res = evaluate(model, cfg, device, step, out, log_path=runs.training_log(cfg))
            runs.print_summary(res, cfg["out"])
            return res
        print("config:\n" + runs.format_config(cfg))
        runs.check_out_dir(cfg["out"], new_run=not cfg["resume"], overwrite=cfg["overwrite"])
        ds = data.load_for(cfg, cfg["train_split"])
        total = runs.num_iterations(cfg, len(ds))
        runs.seed_everything(cfg["seed"])
        model = nets.place(JointVAE(ds.image_size, cfg["cont"], cfg["disc"], cfg["temperature"]), device)
        nets.set_precision(model, cfg["precision"], device)   # the networks only; every equation in fp32
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
        scaler = nets.grad_scaler(cfg["precision"], device)   # fp16's loss scaling; a no-op in fp32 and bf16
        runs.open_run_folder(cfg)                             # locked; --overwrite clears the old run now
        step, window = runs.restore(cfg, model, optimizer, "jointvae", total, scaler) if cfg["resume"] else (0, None)
        cfg = runs.save_config(cfg, iterations_total=total, objective=objective_name(cfg), train_size=len(ds))
        print(f"{cfg['objective']} on {cfg['dataset']} ({len(ds)} images {ds.image_size}), {total} updates, "
              f"{nets.count_parameters(model)} parameters, device {device}, run folder {cfg['out']}")
        with runs.TrainLog(cfg, log_columns(cfg), step, total, device, "jointvae", window, argv,
                           nan_hint="lower --lr or --gamma, or check the input data", scaler=scaler) as log:
            while True:  # training slices, with the --eval-every evaluations (metrics only) between them
                if log.eval_due(step):
                    with runs.rng_isolated():                 # the training RNG streams stay untouched
                        log.record_eval(step, evaluate(model, cfg, device, step))
                if step >= total or log.stopped:
                    break
                step = train(model, optimizer, scaler, ds, cfg, step, log.next_stop(step), log, device)
        if not log.finish() or cfg["no_eval"]:
            return None
        with runs.staged_evaluation(cfg, "jointvae") as out:
            res = evaluate(model, cfg, device, step, out, log_path=os.path.join(cfg["out"], "log.csv"))
        runs.print_summary(res, cfg["out"])
        return res


if __name__ == "__main__":
    main()
