"""The evaluation harness: encode a data set with a model, then run the metrics on it.

metrics.py defines the metrics (arrays in, numbers out); this module is what the three
method files share around them: the evaluated rows, batched no-grad encoding, the
reconstruction NLL, the accuracy pair of metrics.json, and MIG and the FactorVAE score
with the vote images of a factor grid encoded once (`factor_scores`).

Shapes: N evaluated images, D continuous dims, K factors, M votes of L images.
"""

import time

import numpy as np
import torch

from metrics import cluster_accuracy, factor_vae_score, grid_votes, mig

def try_metric(name, fn, reasons):
    """Run one metric; a metric the data cannot support becomes None, its reason recorded
    in `reasons[name]` (metrics.json's null_reasons)."""
    try:
        return fn()
    except ValueError as err:
        reasons[name] = str(err)
        return None


@torch.no_grad()
def encode_batches(fn, ds, indices, device, batch_size):
    """fn(x) -> a tuple of per-image tensors (B, ...) for each batch x (B, C, H, W) of
    ds[indices], in order; returns the tuple with each part concatenated on the CPU (N, ...)."""
    parts = None
    for i in range(0, len(indices), batch_size):
        out = fn(ds.batch(indices[i:i + batch_size]).to(device))
        parts = [[] for _ in out] if parts is None else parts
        for store, t in zip(parts, out):
            store.append(t.cpu())
    return tuple(torch.cat(p) for p in parts)


@torch.no_grad()
def bernoulli_nll(logits_fn, ds, indices, device, batch_size):
    """The Bernoulli NLL of each image of ds[indices] (N,) float64, summed over pixels:
    logits_fn(x, i) -> (B, C, H, W) decoder logits for the batch x = ds[indices[i:i + B]]."""
    nll = torch.empty(len(indices), dtype=torch.float64)                  # (N,)
    for i in range(0, len(indices), batch_size):
        x = ds.batch(indices[i:i + batch_size]).to(device)                # (B, C, H, W)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits_fn(x, i), x, reduction="none")
        nll[i:i + len(x)] = bce.reshape(len(x), -1).sum(dim=1).double().cpu()  # (B,)
    return nll


def accuracy_scores(pred, labels, reasons, no_pred_reason):
    """Hungarian and majority accuracy of a discrete code pred (N,) against labels (N,) as
    metrics.json reports them; None, with the reason, without labels or without pred."""
    keys = ("accuracy_hungarian", "accuracy_majority")
    if labels is None or pred is None:
        for key in keys:
            reasons[key] = "no labels" if labels is None else no_pred_reason
        return dict.fromkeys(keys)
    return {key: cluster_accuracy(pred, labels, mapping=key.split("_")[1]) for key in keys}


def eval_indices(n_data, n_samples, seed):
    """The evaluated images: all, or a random subset of n_samples drawn with seed + 1 (N,)."""
    n = n_data if n_samples is None else min(int(n_samples), n_data)
    if n == n_data:
        return torch.arange(n_data)                                       # (N,)
    g = torch.Generator().manual_seed(int(seed) + 1)
    return torch.randperm(n_data, generator=g)[:n]                        # (N,)


def is_dsprites_grid(ds):
    """dSprites' (shape, scale, orientation, posX, posY) grid, real or procedural."""
    return ds.factor_names is not None and len(ds.factor_names) == 5 and ds.factor_names[0] == "shape"


def factor_scores(ds, indices, codes, logvar, kl_per_dim, encode, n_votes, seed, reasons, discrete_codes=None,
                  mig_discrete=None, subset_size=100):
    """MIG and the FactorVAE score of the evaluated codes, as metrics.json reports them.

    codes (N, D) posterior means and logvar (N, D) of ds[indices]; discrete_codes (N,) the
    discrete code read as one more FactorVAE dim, mig_discrete (N,) or (N, V) the discrete
    latents MIG scores (default: discrete_codes); encode(idx) -> (codes (n, D), discrete
    (n,) or None) for images not evaluated.
    MIG is computed once over all factors; on dSprites the headline `mig` is Chen et al.'s
    (Table 2, sec. 6.1: scale, rotation, posX, posY, shape treated as noise) read from the
    same I(z_j; v_k) matrix, and the five-factor value is `mig_5factors`. On a full factor
    grid each FactorVAE vote's images are drawn from the grid; those already evaluated
    reuse their codes and the rest are encoded once.
    Returns (dict of scores with the seconds each metric took, the full MIG result or None).
    """
    out = {}
    if ds.factors is None:
        for key in ("mig", "factor_vae_score"):
            out[key] = None
            reasons[key] = "no ground-truth factors for this data set"
        return out, None
    factors = ds.factors[indices]                                         # (N, K)
    mig_disc = discrete_codes if mig_discrete is None else mig_discrete
    t0 = time.perf_counter()
    mig_res = try_metric("mig", lambda: mig(codes, factors, logvar=logvar, discrete_codes=mig_disc,
                                            seed=seed), reasons)
    out["seconds_mig"] = round(time.perf_counter() - t0, 2)
    if is_dsprites_grid(ds):
        out["mig"] = None if mig_res is None else float(np.mean(mig_res["gaps"][1:]))
        out["mig_5factors"] = None if mig_res is None else mig_res["mig"]
    else:
        out["mig"] = None if mig_res is None else mig_res["mig"]
    if mig_res is not None:  # the figure's title: the headline MIG, and over which factors
        mig_res["headline"] = ("MIG (scale, rotation, posX, posY)" if is_dsprites_grid(ds) else "MIG") \
            + f" = {out['mig']:.3f}"

    def score():
        kw = dict(kl_per_dim=kl_per_dim, n_votes=n_votes, seed=seed, subset_size=subset_size)
        if ds.factor_sizes is not None and len(ds) == int(np.prod(ds.factor_sizes)):
            vote_factor, vote_idx = grid_votes(ds.factor_sizes, n_votes, subset_size, seed)
            m, l = vote_idx.shape                                         # (M, L)
            v_codes, v_disc = encode_reusing(vote_idx.reshape(-1), indices, codes, discrete_codes, encode, len(ds))
            kw["votes"] = dict(factor=vote_factor, codes=v_codes.reshape(m, l, -1))  # (M, L, D)
            if v_disc is not None:
                kw["votes"]["discrete_codes"] = v_disc.reshape(m, l)      # (M, L)
        return factor_vae_score(codes, factors, discrete_codes=discrete_codes, **kw)["score"]

    t0 = time.perf_counter()
    out["factor_vae_score"] = try_metric("factor_vae_score", score, reasons)
    out["seconds_factor_vae"] = round(time.perf_counter() - t0, 2)  # with encoding the vote images
    return out, mig_res


def encode_reusing(idx, known_idx, known_codes, known_discrete, encode, n_data):
    """Codes of the images `idx` (n,): rows already in (known_idx, known_codes) are copied,
    the others encoded once with `encode` (each distinct image once). -> (n, D), (n,) or None."""
    idx = torch.as_tensor(idx, dtype=torch.long)                          # (n,)
    where = torch.full((n_data,), -1, dtype=torch.long)                   # (N_data,) row in known_*
    where[torch.as_tensor(known_idx, dtype=torch.long)] = torch.arange(len(known_idx))
    pos = where[idx]                                                      # (n,)
    known = pos >= 0
    codes = torch.empty(len(idx), known_codes.shape[1], dtype=known_codes.dtype)  # (n, D)
    codes[known] = known_codes[pos[known]]
    disc = None if known_discrete is None else torch.empty(len(idx), dtype=torch.long)  # (n,)
    if disc is not None:
        disc[known] = torch.as_tensor(known_discrete)[pos[known]].long()
    todo = idx[~known]
    if len(todo):
        uniq, inverse = torch.unique(todo, return_inverse=True)           # (u,), (n_todo,)
        new_codes, new_disc = encode(uniq)
        codes[~known] = torch.as_tensor(new_codes, dtype=codes.dtype)[inverse]
        if disc is not None:
            disc[~known] = torch.as_tensor(new_disc).long()[inverse]
    return codes, disc
