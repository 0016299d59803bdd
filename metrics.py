"""Evaluation metrics shared by the three method files.

Every number in the final reproduction table comes from one of these functions, so
each one is written to be read next to the paper that defines it:

    confusion_matrix, cluster_accuracy
        a discrete code read as an unsupervised class label:
        Dupont (2018) sec. 4.3 (MNIST, 88.7 %); Jeong & Song (2019) Tables 2-4
    kl_per_unit
        information per continuous unit, E_x KL(q(z_j|x) || N(0, 1)):
        Dupont (2018) sec. 4.2 / Fig. 7b; Jeong & Song (2019) supp. C (pruning rule)
    mig, mutual_information_gap
        mutual information gap, two estimators of I(z_j; v_k):
        Chen et al. (2018) eq. 6-7, supp. A.1-A.2, Table 2
    factor_vae_score, grid_votes
        majority-vote disentanglement score of Kim & Mnih (2018), as used by Dupont
        (2018) sec. 4.1, in the exact form of Jeong & Song (2019) supp. C

Shape legend (metrics use their own letters; the repository legend is B batch, D
continuous dims, K categories/factors, S discrete configurations, N dataset size):
    N  samples (rows of the evaluated data set, e.g. 737,280 for the full dSprites grid)
    D  continuous latent dims
    K  ground-truth factors (after `factor_subset`)
    J  latents including discrete ones (J = D + number of discrete variables)
    V  values of one factor
    M  votes, L samples per vote (FactorVAE score)
    P  clusters (discrete code values), C classes (labels)
    Q  query samples and R mixture components of the MIG sampling estimator

All functions are pure: they take numpy arrays or torch tensors (any device), never
touch a model, and return numpy values; randomness comes only from `seed`.

DEVIATION (MIG, `method="sampling"`): Chen et al. supp. A.1 draw 10,000 samples per
factor value and sum q(z_j|n) over the *whole* support of p(n|v_k), and over all N
rows for H(z_j). On the full 737,280-image dSprites grid with D = 10 that is ~4 x 10^11
Gaussian evaluations, 0.5-1 hour on a laptop CPU. Here the defaults draw 2000 samples per
value (20,000 for H(z_j)) and, when a support has more than 2000 rows (20,000 for
H(z_j)), sum the sample's own component and its 256 nearest rows exactly and the
rest from an evenly spread systematic sample of the support (an unbiased estimate
of the mixture density, see `_stratum_log_density`); below those sizes the estimator
is eq. S1 exactly. All counts are arguments of `mig`. tests/test_metrics.py checks
both regimes against numerical integration (within 0.012 and 0.01 nats). On a
synthetic full dSprites grid with 5 codes of known MI (posterior sd 0.004-1) the
defaults agree with the exact values within 0.015 nats, the Monte Carlo noise of
2000 samples per value; benchmarks/metrics.py times the full grid with D = 10.
"""

import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)

# Jeong & Song (2019) supp. C: continuous dims with E_x KL(q(z_j|x) || p(z_j)) < 0.1 are pruned
PRUNE_THRESHOLD = 0.1


# --------------------------------------------------------------------------- input checks


def _to_numpy(x):
    """A numpy view of a numpy array or a torch tensor (detached, moved to the CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _float_matrix(x, name, n=None, other="the factors"):
    """(N, D) float64 array with finite entries, or one clear ValueError."""
    a = _to_numpy(x)
    if a.ndim == 1:
        a = a[:, None]  # (N,) -> (N, 1): a single code dimension
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of shape (N, D), got shape {tuple(a.shape)}.")
    if n is not None and a.shape[0] != n:
        raise ValueError(
            f"{name} has {a.shape[0]} rows but {other} have {n}; pass one row per data point to both."
        )
    a = a.astype(np.float64, copy=False)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values; check the encoder outputs before scoring.")
    return a


def _int_matrix(x, name, n=None):
    """(N, K) int64 array of integer-valued entries, or one clear ValueError."""
    a = _to_numpy(x)
    if a.ndim == 1:
        a = a[:, None]  # (N,) -> (N, 1)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 1-D or 2-D array of integer labels, got shape {tuple(a.shape)}.")
    if n is not None and a.shape[0] != n:
        raise ValueError(
            f"{name} has {a.shape[0]} rows but the codes have {n}; pass one row per data point to both."
        )
    if not np.issubdtype(a.dtype, np.integer):
        if not (np.all(np.isfinite(a)) and np.all(a == np.round(a))):
            raise ValueError(f"{name} must hold integer labels (e.g. a LongTensor), not real values.")
    return a.astype(np.int64, copy=False)


def _label_vector(x, name):
    """(N,) int64 array of non-negative integer labels, or one clear ValueError."""
    a = _to_numpy(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of integer labels, got shape {tuple(a.shape)}.")
    a = _int_matrix(a, name)[:, 0]  # (N,)
    if a.size and a.min() < 0:
        raise ValueError(f"{name} must hold non-negative integer labels; shift them to start at 0.")
    return a


def _dense_codes(a):
    """Relabel each column of an (N, K) integer array to 0..V_k-1; returns codes and V_k."""
    out = np.empty_like(a)  # (N, K)
    sizes = []
    for k in range(a.shape[1]):
        uniq, out[:, k] = np.unique(a[:, k], return_inverse=True)
        sizes.append(len(uniq))
    return out, np.array(sizes, dtype=np.int64)


def _select_factors(factors, factor_subset):
    """Columns of `factors` to score, each checked to take at least two values."""
    n_factors = factors.shape[1]
    if factors.shape[0] < 2:
        raise ValueError(f"factors has {factors.shape[0]} rows; pass at least two data points to score.")
    if factor_subset is None:
        ids = list(range(n_factors))
    else:
        ids = [int(k) for k in np.atleast_1d(_to_numpy(factor_subset))]
        if len(ids) == 0 or len(set(ids)) != len(ids) or min(ids) < 0 or max(ids) >= n_factors:
            raise ValueError(
                f"factor_subset must list distinct factor indices in 0..{n_factors - 1}, got {ids}."
            )
    for k in ids:
        if np.all(factors[:, k] == factors[0, k]):
            raise ValueError(
                f"factor {k} takes a single value, so it carries no information to score; "
                "leave it out with factor_subset=[...]."
            )
    return ids


def _discrete_matrix(discrete_codes, n):
    if discrete_codes is None:
        return np.zeros((n, 0), dtype=np.int64)  # (N, 0): no discrete latent
    return _int_matrix(discrete_codes, "discrete_codes", n)  # (N, M_disc)


# --------------------------------------------------------------------------- accuracy


def confusion_matrix(pred, labels):
    """Counts C[p, c] = #{i : pred_i = p, labels_i = c}.

    pred (N,) and labels (N,) are non-negative integer labels; the result has
    shape (P, C) = (max(pred) + 1, max(labels) + 1), dtype int64 -- unless the values are so
    sparse that this matrix would dwarf the data, in which case rows and columns are the
    distinct values of pred and labels in increasing order (accuracy is unchanged).
    """
    pred = _label_vector(pred, "pred")  # (N,)
    labels = _label_vector(labels, "labels")  # (N,)
    if pred.shape[0] != labels.shape[0]:
        raise ValueError(
            f"pred has {pred.shape[0]} entries but labels has {labels.shape[0]}; "
            "pass one prediction per label."
        )
    if pred.shape[0] == 0:
        raise ValueError("pred and labels are empty; pass at least one labelled example.")
    n_pred, n_lab = int(pred.max()) + 1, int(labels.max()) + 1
    if n_pred * n_lab > 4 * pred.shape[0] + 10_000:
        # Sparse label values (e.g. ids in the millions): count over the values that occur,
        # not over 0..max, so the matrix is (distinct preds, distinct labels).
        pred = np.unique(pred, return_inverse=True)[1].reshape(-1)
        labels = np.unique(labels, return_inverse=True)[1].reshape(-1)
        n_pred, n_lab = int(pred.max()) + 1, int(labels.max()) + 1
    flat = np.bincount(pred * n_lab + labels, minlength=n_pred * n_lab)  # (P*C,)
    return flat.reshape(n_pred, n_lab).astype(np.int64)  # (P, C), row = cluster


def cluster_accuracy(pred, labels, mapping="hungarian"):
    """Accuracy of a discrete code read as a class label, in [0, 1].

    Clusters have no names, so the score depends on how clusters are mapped to classes:

    - ``"hungarian"``: the best one-to-one map, found by
      `scipy.optimize.linear_sum_assignment` on the (P, C) confusion matrix (maximising
      matched counts). Works for P != C: with more clusters than classes the extra
      clusters stay unmatched and count as errors, with fewer some classes are never
      predicted.
    - ``"majority"``: each cluster takes its most frequent class ("cluster purity").
      Several clusters may take the same class, so majority >= hungarian always.

    Which one the papers used: neither text names the mapping. Dupont (2018) sec. 4.3
    reports 88.7 % on the MNIST test set "by simply looking at the value of the discrete
    latent variable"; Jeong & Song (2019) Tables 2-4 report "classification accuracy
    computed from the discrete variables". The JointVAE author's released MNIST weights
    give 88.7 % under *both* mappings (measured: 88.72 %, argmax of alpha, images resized
    28 -> 32 bilinearly), so the MNIST number cannot tell them apart; the released
    Fashion-MNIST weights give 45.0 % (hungarian) vs 51.8 % (majority), so the choice
    matters and a table must say which one it used. Hungarian is the default because
    it cannot be inflated by splitting a class over several clusters.
    """
    if mapping not in ("hungarian", "majority"):
        raise ValueError(f"mapping must be 'hungarian' or 'majority', got {mapping!r}.")
    cm = confusion_matrix(pred, labels)  # (P, C)
    # BEGIN SOLUTION: unsupervised accuracy, return the fraction correct under `mapping` (a float)
    n = cm.sum()
    if mapping == "majority":
        return float(cm.max(axis=1).sum() / n)
    rows, cols = linear_sum_assignment(cm, maximize=True)  # one-to-one cluster -> class
    return float(cm[rows, cols].sum() / n)
    # END SOLUTION


# --------------------------------------------------------------------------- KL per unit


def kl_per_unit(mu, logvar):
    """Mean over data of KL(N(mu, exp(logvar)) || N(0, 1)) for each continuous unit, (D,).

    Closed form per unit: 0.5 * (mu^2 + exp(logvar) - 1 - logvar), averaged over the
    N rows. Dupont (2018) sec. 4.2 / Fig. 7b rank units by this value (it upper-bounds
    the information a unit carries about x); Jeong & Song (2019) supp. C prune units
    whose value is below 0.1 before the disentanglement score.
    """
    mu = _float_matrix(mu, "mu")  # (N, D)
    logvar = _float_matrix(logvar, "logvar", mu.shape[0], other="mu")  # (N, D)
    if logvar.shape != mu.shape:
        raise ValueError(
            f"mu has shape {mu.shape} but logvar has shape {logvar.shape}; pass matching arrays."
        )
    kl = 0.5 * (mu**2 + np.exp(logvar) - 1.0 - logvar)  # (N, D)
    return kl.mean(axis=0)  # (D,)


# --------------------------------------------------------------------------- MIG


def _entropy(counts):
    """Plug-in entropy in nats of a vector of counts."""
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _mi_discrete(a, b, n_a, n_b):
    """Exact mutual information (nats) of the empirical joint of two label vectors.

    a (N,) in 0..n_a-1, b (N,) in 0..n_b-1: I = sum p(a,b) log p(a,b) / (p(a) p(b)).
    """
    joint = np.bincount(a * n_b + b, minlength=n_a * n_b).reshape(n_a, n_b)  # (n_a, n_b), row = a
    p = joint / joint.sum()
    pa = p.sum(axis=1, keepdims=True)  # (n_a, 1)
    pb = p.sum(axis=0, keepdims=True)  # (1, n_b)
    nz = p > 0
    return float((p[nz] * np.log(p[nz] / (pa @ pb)[nz])).sum())


def _histogram_bins(codes, n_bins):
    """Each column cut into n_bins equal-width bins over [min, max]: (N, D) int64 in 0..n_bins-1."""
    lo = codes.min(axis=0)  # (D,)
    width = (codes.max(axis=0) - lo) / n_bins  # (D,)
    width[width == 0] = 1.0  # a constant column falls in bin 0
    return np.clip(np.floor((codes - lo) / width), 0, n_bins - 1).astype(np.int64)  # (N, D)


def _stratum_log_density(mu, sd, n_queries, support, neighbours, rng, chunk_elements, dtype):
    """Samples z ~ q(z|n), n ~ p(n|stratum), and their log q(z|stratum), for all latents at once.

    mu, sd (S, D): posterior means and standard deviations of the S rows of one
    stratum (the support X_v of p(n|v_k), or the whole data set for H(z_j)), where
    q(z_j|stratum) = (1/S) sum_n N(z_j; mu_nj, sd_nj^2) is a 1-D Gaussian mixture.

    Queries are stratified over p(n|stratum) (Chen et al. supp. A.1): distinct rows
    when n_queries <= S, otherwise every row the same number of times.

    When S <= support the mixture is summed over all S rows: eq. S1 as written.
    Otherwise, per latent j and query z, with the rows sorted by mu_j, it is the sum of
        (a) the query's own component, exact (float64);
        (b) the `neighbours` rows whose means are nearest to z, exact;
        (c) the remaining rows, estimated from a systematic sample: every `step`-th row
            of the sorted order from a random offset, step = ceil(S / support), each
            sampled row standing for `step` rows.
    Every row outside (a)-(b) is in the sample with probability 1/step, so (c) is
    unbiased (Horvitz-Thompson) and the density estimate is unbiased; the logarithm
    adds a small downward bias. (a) makes near-deterministic codes exact (the own
    term dominates), (b) resolves structure finer than the sample spacing, and the
    evenly spread sample (c) integrates the smooth remainder like a quadrature.

    Returns log q(z|stratum) at the queries, (Q, D) float64.
    """
    size, dim = mu.shape
    if n_queries <= size:
        queries = rng.choice(size, n_queries, replace=False)  # (Q,) local row indices
    else:
        queries = np.tile(np.arange(size), -(-n_queries // size))  # (Q,), Q = S * ceil(n_queries / S)
    eps = rng.standard_normal((len(queries), dim))  # (Q, D)
    z = mu[queries] + sd[queries] * eps  # (Q, D) z ~ q(z|n), reparameterised
    own = -0.5 * eps**2 - np.log(sd[queries]) - LOG_SQRT_2PI  # (Q, D) log q(z_j | n_own)
    if size == 1:
        return own

    step = -(-size // support)  # 1 when the stratum fits: then every row is a component
    offset = int(rng.integers(step))
    n_near = 0 if step == 1 else min(neighbours, size)
    cols = np.arange(dim)
    order = np.argsort(mu, axis=0, kind="stable")  # (S, D) rows sorted by mu_j, per latent
    rank = np.empty_like(order)  # (S, D) position of each row in its latent's sorted order
    rank[order, cols] = np.arange(size)[:, None]
    own_rank = rank[queries]  # (Q, D)
    mu_s, sd_s = mu[order, cols], sd[order, cols]  # (S, D) each, sorted per latent
    # (b) window of sorted positions [start, start + n_near) around each query
    start = np.empty(z.shape, dtype=np.int64)  # (Q, D)
    for j in range(dim):
        start[:, j] = np.searchsorted(mu_s[:, j], z[:, j]) - n_near // 2
    np.clip(start, 0, size - n_near, out=start)
    # (c) the systematic sample: sorted positions offset, offset + step, ...
    mu_c, sd_c = mu_s[offset::step], sd_s[offset::step]  # (R, D) each
    n_comp = mu_c.shape[0]
    # sample columns [lo, hi) fall inside the window: removed from (c), counted in (b)
    lo = -(-(start - offset) // step)  # (Q, D)
    hi = -(-(start + n_near - offset) // step)  # (Q, D)
    # the query's own row, where it is in the sample (its column is zeroed; if it also
    # lies in the window the column is dropped with the window's columns anyway)
    q_hit, j_hit = np.nonzero((own_rank - offset) % step == 0)
    c_hit = (own_rank[q_hit, j_hit] - offset) // step
    seg = max(1, -(-n_near // step) + 1)  # the window never covers more sample columns than this

    # Centring keeps float32 (z - mu) accurate; exp(logpdf + log sd_min) <= 1 cannot overflow.
    centre = mu_c.mean(axis=0)  # (D,)
    log_sd_min = np.log(sd.min(axis=0))  # (D,)
    to_t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=dtype)  # noqa: E731
    mu_t, inv_t = to_t((mu_c - centre).T), to_t((1.0 / sd_c).T)  # (D, R) each
    shift_t = to_t((log_sd_min - np.log(sd_c)).T)  # (D, R), <= 0
    mu_st, inv_st = to_t((mu_s - centre).T), to_t((1.0 / sd_s).T)  # (D, S) each, for the window
    shift_st = to_t((log_sd_min - np.log(sd_s)).T)  # (D, S)
    z_t = to_t(z - centre).unsqueeze(-1)  # (Q, D, 1)
    start_t, lo_t, hi_t = (torch.as_tensor(a) for a in (start, lo, hi))  # (Q, D) each
    own_rank_t = torch.as_tensor(own_rank)  # (Q, D)

    def log_kernel(t, inv, shift):
        # in place: t = z - mu  ->  log N(z; mu, sd^2) + log sd_min + log sqrt(2 pi)
        return t.mul_(inv).square_().mul_(-0.5).add_(shift)

    sample_sum = np.empty(z.shape)  # (Q, D): (c) without the own row and the window
    near_sum = np.zeros(z.shape)  # (Q, D): (b) without the own row
    chunk = max(1, chunk_elements // (dim * (n_comp + n_near)))
    for s in range(0, len(queries), chunk):
        e = min(s + chunk, len(queries))
        t = log_kernel(z_t[s:e] - mu_t, inv_t, shift_t).exp_()  # (Qc, D, R)
        sel = (q_hit >= s) & (q_hit < e)
        t[q_hit[sel] - s, j_hit[sel], c_hit[sel]] = 0.0  # own component: added exactly below
        total = t.sum(dim=-1)  # (Qc, D)
        if n_near:
            # drop the sample columns inside the window (contiguous, at most `seg` of them)
            idx = lo_t[s:e].unsqueeze(-1) + torch.arange(seg)  # (Qc, D, seg)
            inside = idx < hi_t[s:e].unsqueeze(-1)
            part = torch.gather(t, 2, idx.clamp_(max=n_comp - 1)) * inside
            total = (total - part.sum(dim=-1)).clamp_(min=0.0)
            # (b): the window rows, exactly, minus the own row
            pos = start_t[s:e].unsqueeze(-1) + torch.arange(n_near)  # (Qc, D, W)
            w = torch.gather(mu_st.expand(e - s, -1, -1), 2, pos).neg_().add_(z_t[s:e])  # (Qc, D, W) z - mu
            w = log_kernel(w, torch.gather(inv_st.expand(e - s, -1, -1), 2, pos),
                           torch.gather(shift_st.expand(e - s, -1, -1), 2, pos)).exp_()
            w.masked_fill_(pos == own_rank_t[s:e].unsqueeze(-1), 0.0)
            near_sum[s:e] = w.sum(dim=-1).double().numpy()
        sample_sum[s:e] = total.double().numpy()
    rest = near_sum + step * sample_sum  # (Q, D), in units of exp(-log sd_min - log sqrt(2 pi))
    with np.errstate(divide="ignore"):  # a sum that underflows is negligible next to the own term
        log_rest = np.log(rest) - log_sd_min - LOG_SQRT_2PI  # (Q, D)
    return np.logaddexp(own, log_rest) - math.log(size)  # (Q, D) log (1/S) sum_n q(z_j|n)


def _mi_sampling(mu, sd, groups, rng, samples_per_value, support_per_value, entropy_samples,
                 entropy_support, neighbours, chunk_elements, dtype):
    """I(z_j; v_k) for every continuous j and every factor k by Chen et al. eq. S1, (D, K)."""
    n = mu.shape[0]
    # H(z_j) = -E_{q(z_j)} log q(z_j), samples stratified over p(n) (supp. A.1); shared by all factors
    h_z = -_stratum_log_density(mu, sd, entropy_samples, entropy_support, neighbours, rng,
                                chunk_elements, dtype).mean(axis=0)  # (D,)
    mi = np.empty((mu.shape[1], len(groups)))  # (D, K)
    for k, rows_per_value in enumerate(groups):
        # eq. 6 / S1: E_{p(v) p(n'|v) q(z|n')} log sum_{n in X_v} q(z|n) p(n|v), stratified over v
        cond = np.zeros(mu.shape[1])  # (D,)
        for rows in rows_per_value:
            log_q = _stratum_log_density(mu[rows], sd[rows], samples_per_value, support_per_value,
                                         neighbours, rng, chunk_elements, dtype)  # (Q, D)
            cond += len(rows) / n * log_q.mean(axis=0)  # p(v) * E log q(z_j | v)
        mi[:, k] = cond + h_z
    return mi


def mutual_information_gap(mi, entropy):
    """eq. 7 from the MI matrix: the normalised gap per factor and the two latents it compares.

    mi (J, K): I(z_j; v_k) in nats; entropy (K,): H(v_k) > 0.
    Returns (gaps (K,) float, top (K,) int, runner_up (K,) int):
        top[k] = j(k) = argmax_j I(z_j; v_k), runner_up[k] = argmax_{j != j(k)} I(z_j; v_k),
        gaps[k] = (I(z_{j(k)}; v_k) - I(z_{runner_up[k]}; v_k)) / H(v_k);
    with a single latent (J = 1) there is no runner-up: runner_up = -1, gaps = I / H.
    MIG is the mean of gaps.
    """
    # BEGIN SOLUTION: MIG (Chen et al. eq. 7), return (gaps (K,), top latent (K,), runner-up latent (K,))
    order = np.argsort(-mi, axis=0, kind="stable")  # (J, K) latents by decreasing MI per factor
    top = order[0]  # (K,)
    best = mi[top, np.arange(mi.shape[1])]  # (K,)
    if mi.shape[0] > 1:
        runner = order[1]  # (K,)
        second = mi[runner, np.arange(mi.shape[1])]  # (K,)
    else:
        runner, second = np.full(mi.shape[1], -1), np.zeros(mi.shape[1])
    return (best - second) / entropy, top, runner  # eq. 7 summands
    # END SOLUTION


def mig(codes, factors, logvar=None, discrete_codes=None, method="sampling", factor_subset=None,
        seed=0, *, samples_per_value=2000, support_per_value=2000, entropy_samples=20000,
        entropy_support=20000, neighbours=256, n_bins=20, chunk_elements=1 << 18,
        dtype=torch.float32):
    """Mutual information gap, Chen et al. (2018) eq. 7, with two estimators of I(z_j; v_k).

    MIG = (1/K) sum_k (I(z_{j(k)}; v_k) - max_{j != j(k)} I(z_j; v_k)) / H(v_k),
    j(k) = argmax_j I(z_j; v_k), in [0, 1] (eq. 7; the normalisation by the factor
    entropy is supp. A.2: I(z_j; v_k) <= H(v_k) for a discrete factor).

    Args:
        codes: (N, D) posterior means of the continuous latents.
        factors: (N, K) integer ground-truth factor values, one row per data point, in
            any row order (rows are grouped by value, never reshaped into a grid).
        logvar: (N, D) posterior log-variances; required by method="sampling".
        discrete_codes: (N,) or (N, M) integer labels of discrete latents (e.g. the argmax
            of JointVAE's alpha or CascadeVAE's assignment); each counts as one more
            latent, placed after the D continuous ones, and its MI with v_k is computed
            exactly from the contingency table (by both methods).
        method: "sampling" (Chen et al. eq. 6 / supp. A.1) or "histogram" (see below).
        factor_subset: factor columns to score. Chen et al. score dSprites on scale,
            rotation, posX, posY only (Table 2; shape is "treated as noise", sec. 6.1):
            factor_subset=[1, 2, 3, 4] for the (shape, scale, orientation, posX, posY) grid.
        seed: seeds the sampling estimator (numpy Generator); the histogram is deterministic.
        samples_per_value: sampling: samples z ~ q(z|n), n ~ p(n|v_k) per factor value
            (Chen et al. use 10,000; default 2000, see DEVIATION in the module docstring).
        support_per_value: sampling: the largest support X_v whose mixture
            (1/|X_v|) sum_n q(z_j|n) is summed in full; a larger support is summed as
            own component + `neighbours` nearest rows (exact) + a systematic sample of
            about this many rows standing for the rest (unbiased; `_stratum_log_density`).
        entropy_samples, entropy_support: the same two counts for H(z_j), whose samples
            are stratified over p(n) (distinct rows; every row when N is smaller).
        neighbours: sampling: rows nearest to each sample (in mu_j) summed exactly when a
            support is subsampled; resolves codes finer than the sample spacing.
        n_bins: histogram: equal-width bins per continuous dim (20, the common choice).
        chunk_elements: sampling: size of one (queries x latents x components) block;
            memory stays O(chunk_elements + N * D) whatever N is.
        dtype: sampling: torch dtype of the pairwise block. float32 after centring
            rounds (z - mu) / sd by ~1e-7 x (code range / sd), i.e. < 1e-3 nats while
            sd > 1e-4 x the code range; torch.float64 is exact, at ~2.5x the time.

    Returns a dict:
        "mig": float; "gaps": (K,) normalised gap per factor;
        "mi": (J, K) I(z_j; v_k) in nats; "mi_normalized": (J, K) = mi / H(v_k);
        "entropy": (K,) H(v_k) in nats; "top_latent", "runner_up": (K,) latent indices
        (rows of "mi"; -1 when J = 1); "latents": J names ("z0".., then "c0"..);
        "factors": the K factor column indices scored; "method" and the sample counts.

    Why the two estimators give different numbers:
        "sampling" is the paper's: it uses the whole posterior q(z_j|x), so a unit whose
        mean moves with v_k but whose variance is large carries little information, and
        a unit whose mean is an injective function of the image carries everything once
        its variance is small (then I(z_j; v_k) -> H(v_k) for every factor, an entangled
        unit included). "histogram" uses only the means, quantised into n_bins bins over
        each unit's range: the posterior variance is ignored, I(z_j; v_k) <= log n_bins
        (a 40-value rotation can never reach H(v_k) = log 40 with 20 bins), several factor
        values can share a bin (lowering MI) and outliers stretch the range (lowering it
        more), while the plug-in estimate of a finite table is biased upward by about
        (n_bins - 1)(V - 1) / (2N) nats. Compare numbers only within one estimator.

    Known pitfall avoided: a popular re-implementation draws latent samples of shape
    (n_samples, latent_dim) and then calls `.view(latent_dim, n_samples)` where a transpose
    was meant, so each "unit" mixes values of every unit. Here samples keep their
    (sample, unit) layout, every reshape is explicit with a shape comment, and rows are
    grouped by their factor values, so no grid layout is assumed.
    """
    if method not in ("sampling", "histogram"):
        raise ValueError(f"method must be 'sampling' or 'histogram', got {method!r}.")
    factors = _int_matrix(factors, "factors")  # (N, K_all)
    n = factors.shape[0]
    codes = _float_matrix(codes, "codes", n)  # (N, D)
    disc = _discrete_matrix(discrete_codes, n)  # (N, M_disc)
    ids = _select_factors(factors, factor_subset)
    fac, fac_sizes = _dense_codes(factors[:, ids])  # (N, K) in 0..V_k-1
    disc, disc_sizes = _dense_codes(disc)  # (N, M_disc)
    for name, val in (("samples_per_value", samples_per_value), ("support_per_value", support_per_value),
                      ("entropy_samples", entropy_samples), ("entropy_support", entropy_support),
                      ("n_bins", n_bins), ("chunk_elements", chunk_elements)):
        if int(val) < 1:
            raise ValueError(f"{name} must be a positive integer, got {val}.")
    if int(neighbours) < 0:
        raise ValueError(f"neighbours must be a non-negative integer, got {neighbours}.")
    entropy = np.array([_entropy(np.bincount(fac[:, k])) for k in range(fac.shape[1])])  # (K,)

    settings = {"method": method}
    if method == "sampling":
        if logvar is None:
            raise ValueError(
                "method='sampling' samples from q(z_j|x) and needs the posterior log-variances; "
                "pass logvar=... or use method='histogram'."
            )
        logvar = _float_matrix(logvar, "logvar", n)  # (N, D)
        if logvar.shape != codes.shape:
            raise ValueError(
                f"codes have shape {codes.shape} but logvar has shape {logvar.shape}; pass matching arrays."
            )
        rng = np.random.default_rng(seed)
        groups = []  # per factor: the row indices of each of its values (support of p(n|v_k))
        for k in range(fac.shape[1]):
            order = np.argsort(fac[:, k], kind="stable")  # (N,) rows sorted by value
            groups.append(np.split(order, np.cumsum(np.bincount(fac[:, k]))[:-1]))
        mi_cont = _mi_sampling(codes, np.exp(0.5 * logvar), groups, rng, int(samples_per_value),
                               int(support_per_value), int(entropy_samples), int(entropy_support),
                               int(neighbours), int(chunk_elements), dtype)  # (D, K)
        settings.update(samples_per_value=int(samples_per_value), support_per_value=int(support_per_value),
                        entropy_samples=int(entropy_samples), entropy_support=int(entropy_support),
                        neighbours=int(neighbours))
    else:
        bins = _histogram_bins(codes, int(n_bins))  # (N, D)
        mi_cont = np.array([[_mi_discrete(bins[:, j], fac[:, k], int(n_bins), fac_sizes[k])
                             for k in range(fac.shape[1])] for j in range(codes.shape[1])])  # (D, K)
        settings.update(n_bins=int(n_bins))
    mi_disc = np.array([[_mi_discrete(disc[:, m], fac[:, k], disc_sizes[m], fac_sizes[k])
                         for k in range(fac.shape[1])] for m in range(disc.shape[1])])  # (M_disc, K)
    mi = np.concatenate([mi_cont, mi_disc.reshape(disc.shape[1], fac.shape[1])], axis=0)  # (J, K)

    gaps, top, runner = mutual_information_gap(mi, entropy)  # (K,) each
    return {
        "mig": float(gaps.mean()),
        "gaps": gaps,
        "mi": mi,
        "mi_normalized": mi / entropy,  # (J, K)
        "entropy": entropy,
        "top_latent": top,
        "runner_up": runner,
        "latents": [f"z{j}" for j in range(codes.shape[1])] + [f"c{m}" for m in range(disc.shape[1])],
        "factors": ids,
        **settings,
    }


# --------------------------------------------------------------------------- FactorVAE score


def _variance_continuous(x, axis):
    """Jeong & Song supp. C: 1/(2N(N-1)) sum_{p,q} (x_p - x_q)^2 = the unbiased variance."""
    return x.var(axis=axis, ddof=1)


def _variance_discrete(labels, n_classes):
    """Jeong & Song supp. C for the discrete dim: 1/(2N(N-1)) sum_{p,q} 1[x_p != x_q], in O(N).

    labels (..., N) in 0..n_classes-1. The ordered pairs that differ number
    N^2 - sum_c n_c^2 (n_c the class counts), so no N x N table is built.
    """
    lead = labels.shape[:-1]
    n = labels.shape[-1]
    flat = labels.reshape(-1, n)  # (G, N), G = prod(lead)
    offset = np.arange(flat.shape[0])[:, None] * n_classes  # (G, 1)
    counts = np.bincount((flat + offset).reshape(-1), minlength=flat.shape[0] * n_classes)
    counts = counts.reshape(flat.shape[0], n_classes).astype(np.float64)  # (G, n_classes)
    var = (n * n - (counts**2).sum(axis=1)) / (2.0 * n * (n - 1))  # (G,)
    return var.reshape(lead)


def _majority_vote_accuracy(vote_matrix):
    """(1/M) sum_j max_k V_jk (Jeong & Song supp. C): each dim votes for its modal factor."""
    return float(vote_matrix.max(axis=1).sum() / vote_matrix.sum())


def _vote_factors(rng, factor_ids, n_votes, balanced):
    """The factor fixed in each vote, (M,).

    balanced: every factor gets M/K votes (remainder to the first factors), in random
    order, as the CascadeVAE authors' released evaluation does; otherwise each vote
    draws its factor uniformly (Kim & Mnih's description).
    """
    factor_ids = np.asarray(factor_ids, dtype=np.int64)
    if balanced:
        return rng.permutation(np.resize(factor_ids, n_votes))  # (M,)
    return rng.choice(factor_ids, n_votes)  # (M,)


def grid_votes(factor_sizes, n_votes, subset_size, seed, factor_subset=None, *, balanced=True):
    """Rows of a full factor grid for FactorVAE-score votes: factor k fixed, the others uniform.

    The grid is row-major over `factor_sizes` (last factor fastest, as dSprites and
    data.py's `shapes`): row = sum_k v_k * prod(factor_sizes[k+1:]). Each vote fixes one
    factor (see `factor_vae_score` for `balanced`) at a uniformly drawn value and draws
    every other factor uniformly and independently for each of its L samples.

    Returns (vote_factor LongTensor (M,), indices LongTensor (M, L)); encode the images
    at `indices.reshape(-1)`, reshape the codes to (M, L, D) and pass
    votes={"factor": vote_factor, "codes": ...} to `factor_vae_score`.
    """
    sizes = np.asarray([int(s) for s in factor_sizes], dtype=np.int64)  # (K_all,)
    if sizes.ndim != 1 or len(sizes) == 0 or sizes.min() < 1:
        raise ValueError(f"factor_sizes must be a list of positive integers, got {list(factor_sizes)}.")
    if int(n_votes) < 1 or int(subset_size) < 2:
        raise ValueError("n_votes must be >= 1 and subset_size >= 2 (a variance needs two samples).")
    ids = list(range(len(sizes))) if factor_subset is None else [int(k) for k in np.atleast_1d(factor_subset)]
    if len(ids) == 0 or len(set(ids)) != len(ids) or min(ids) < 0 or max(ids) >= len(sizes):
        raise ValueError(
            f"factor_subset must list distinct factor indices in 0..{len(sizes) - 1}, got {ids}."
        )
    for k in ids:
        if sizes[k] < 2:
            raise ValueError(
                f"factor {k} takes a single value, so fixing it tells nothing; "
                "leave it out with factor_subset=[...]."
            )
    rng = np.random.default_rng(seed)
    vote_factor = _vote_factors(rng, ids, int(n_votes), balanced)  # (M,)
    values = rng.integers(0, sizes, size=(int(n_votes), int(subset_size), len(sizes)))  # (M, L, K_all)
    fixed = rng.integers(0, sizes[vote_factor])  # (M,) the fixed value of each vote's factor
    values[np.arange(int(n_votes)), :, vote_factor] = fixed[:, None]
    strides = np.concatenate([np.cumprod(sizes[::-1])[::-1][1:], [1]])  # (K_all,) row-major
    indices = values @ strides  # (M, L)
    return torch.from_numpy(vote_factor), torch.from_numpy(indices)


def factor_vae_score(codes, factors, kl_per_dim=None, discrete_codes=None, n_votes=800,
                     subset_size=100, seed=0, votes=None, *, factor_subset=None,
                     prune_threshold=PRUNE_THRESHOLD, n_eval_votes=0, balanced=True, constant_discrete="drop"):
    """Kim & Mnih (2018) disentanglement score in the exact form of Jeong & Song (2019) supp. C.

    1. Prune continuous dims whose mean KL (`kl_per_dim`, e.g. from `kl_per_unit`) is
       below 0.1 (collapsed to the prior); without `kl_per_dim` all dims are kept.
       Dims constant over the data are dropped too (0/0 would win every vote).
    2. v_j = empirical variance of each kept dim over the full data (`codes`):
       1/(2N(N-1)) sum_{p,q} (x_p - x_q)^2, and for a discrete dim the mismatch count
       1/(2N(N-1)) sum_{p,q} 1[x_p != x_q].
    3. Each vote fixes a factor k at one value and takes L = subset_size samples whose
       other factors vary; the vote is j = argmin_j Var_j / v_j (Var_j the same
       estimator on the L samples), giving the pair (j, k).
    4. With M = n_votes votes, V_jk = #votes (j, k), score = (1/M) sum_j max_k V_jk
       (a majority-vote classifier that maps each dim to its modal factor; chance = 1/K).

    Args:
        codes: (N, D) posterior means over the full data (for v_j, and for the votes
            when `votes` is None).
        factors: (N, K) integer factor values of those rows; votes are drawn from them
            (a value chosen uniformly, then L rows with that value, without replacement).
            May be None when `votes` is given.
        kl_per_dim: (D,) mean KL per continuous dim, for the 0.1 pruning rule.
        discrete_codes: (N,) or (N, M) integer labels; each variable is one more dim,
            placed after the kept continuous ones (last rows of the vote matrix).
        n_votes: M, the number of (training) votes (800 in Jeong & Song).
        subset_size: L, samples per vote (100 in Jeong & Song).
        votes: precomputed subsets instead of sampling from `factors`: a dict with
            "factor" (M,), "codes" (M, L, D) and, with discrete codes, "discrete_codes"
            (M, L) or (M, L, M_disc); e.g. from `grid_votes` on a full factor grid.
            All its votes are used (n_votes and subset_size are then ignored), the last
            `n_eval_votes` of them as evaluation votes.
        factor_subset: factors that may be fixed (default: all).
        prune_threshold: the 0.1 of step 1.
        n_eval_votes: 0 gives Jeong & Song's score (accuracy on the votes that built the
            classifier). > 0 gives Kim & Mnih's original protocol: the majority-vote
            classifier is fitted on the n_votes training votes and the score is its
            accuracy on n_eval_votes further votes (a dim never voted for in training
            predicts no factor, so its evaluation votes count as errors).
        balanced: M/K votes per factor in random order (as the CascadeVAE authors'
            released evaluation does) instead of a uniformly drawn factor per vote.
        constant_discrete: "drop" (default) leaves a discrete code that takes one value
            over the data out of the vote, like a constant continuous dim; "authors" keeps
            it and divides by var + 1e-10 as the CascadeVAE authors' evaluation does, so a
            collapsed code (0 / 1e-10 = 0) wins every vote and the score is 1/K.

    Returns a dict: "score"; "vote_matrix" (J_kept, K) int64 training votes, rows =
    "latents" (kept continuous dims "z<j>", then "c<m>"), columns = factor indices;
    "kept_dims" (indices of the kept continuous dims); "full_variance" (J_kept,) the v_j;
    "n_votes"; with n_eval_votes > 0 also "train_score", "eval_vote_matrix" and
    "classifier" (J_kept,) the factor each dim predicts (-1: none).
    """
    codes = _float_matrix(codes, "codes")  # (N, D)
    n, dim = codes.shape
    disc = _discrete_matrix(discrete_codes, n)  # (N, M_disc)
    if int(subset_size) < 2:
        raise ValueError("subset_size must be at least 2, since a variance needs two samples.")
    if int(n_votes) < 1 or int(n_eval_votes) < 0:
        raise ValueError("n_votes must be >= 1 and n_eval_votes >= 0.")

    keep = np.ones(dim, dtype=bool)  # (D,)
    if kl_per_dim is not None:
        kl = _to_numpy(kl_per_dim).astype(np.float64).reshape(-1)  # (D,)
        if not np.isfinite(kl).all():
            raise ValueError("kl_per_dim has NaN or infinite entries; pass the finite mean KL of each dim "
                             "(the 0.1-nat pruning rule cannot compare NaN).")
        if kl.shape[0] != dim:
            raise ValueError(
                f"kl_per_dim has {kl.shape[0]} entries but codes have {dim} dims; pass one per dim."
            )
        keep &= kl >= prune_threshold  # supp. C: prune E_x KL(q(z_j|x) || p(z_j)) < 0.1
    var_full = _variance_continuous(codes, axis=0)  # (D,)
    keep &= var_full > 0
    kept = np.nonzero(keep)[0]  # (D_kept,)
    disc_sizes = disc.max(axis=0) + 1 if disc.shape[1] else np.zeros(0, dtype=np.int64)  # (M_disc,)
    if disc.shape[1] and disc.min() < 0:
        raise ValueError("discrete_codes must hold non-negative integer labels; shift them to start at 0.")
    var_disc = np.array([_variance_discrete(disc[:, m], disc_sizes[m])
                         for m in range(disc.shape[1])])  # (M_disc,)
    if constant_discrete == "authors":
        keep_disc = np.arange(disc.shape[1])  # the authors' var + 1e-10: a constant code stays, and wins
        v = np.concatenate([var_full[kept] + 1e-10, var_disc + 1e-10])  # (J_kept,)
    elif constant_discrete == "drop":
        keep_disc = np.nonzero(var_disc > 0)[0]  # a constant discrete code is dropped like a constant dim
        v = np.concatenate([var_full[kept], var_disc[keep_disc]])  # (J_kept,)
    else:
        raise ValueError(f"constant_discrete must be 'drop' or 'authors', got {constant_discrete!r}.")

    rng = np.random.default_rng(seed)
    if votes is None:
        if factors is None:
            raise ValueError(
                "factor_vae_score needs factors (N, K) to draw votes from; pass them or precomputed votes=."
            )
        factors = _int_matrix(factors, "factors", n)  # (N, K)
        n_factors = factors.shape[1]
        ids = _select_factors(factors, factor_subset)
        m_total = int(n_votes) + int(n_eval_votes)
        vote_factor = _vote_factors(rng, ids, m_total, balanced)  # (M_total,)
        rows_by = {}  # factor -> list of row arrays, one per value
        for k in ids:
            values, inverse, counts = np.unique(factors[:, k], return_inverse=True, return_counts=True)
            if counts.min() < int(subset_size):
                raise ValueError(
                    f"factor {k} has a value with only {counts.min()} samples, fewer than "
                    f"subset_size={int(subset_size)}; pass more data or a smaller subset_size."
                )
            order = np.argsort(inverse, kind="stable")  # (N,) rows sorted by value of factor k
            rows_by[k] = np.split(order, np.cumsum(counts)[:-1])
        subsets = np.empty((m_total, int(subset_size)), dtype=np.int64)  # (M, L) row indices
        for i, k in enumerate(vote_factor):
            group = rows_by[k][rng.integers(len(rows_by[k]))]  # a uniformly drawn value of factor k
            subsets[i] = rng.choice(group, int(subset_size), replace=False)
        sub_codes = codes[subsets]  # (M, L, D)
        sub_disc = disc[subsets]  # (M, L, M_disc)
    else:
        vote_factor = _to_numpy(votes["factor"]).astype(np.int64).reshape(-1)  # (M,)
        sub_codes = _to_numpy(votes["codes"]).astype(np.float64)  # (M, L, D)
        if sub_codes.ndim != 3 or sub_codes.shape[0] != len(vote_factor) or sub_codes.shape[2] != dim:
            raise ValueError(
                f"votes['codes'] must have shape (M, L, {dim}) with M = len(votes['factor']) = "
                f"{len(vote_factor)}, got {tuple(sub_codes.shape)}."
            )
        if sub_codes.shape[1] < 2:
            raise ValueError("each vote needs at least 2 samples (votes['codes'] has L < 2).")
        if not np.all(np.isfinite(sub_codes)):
            raise ValueError(
                "votes['codes'] contains NaN or infinite values; check the encoder outputs before scoring."
            )
        if disc.shape[1]:
            if "discrete_codes" not in votes:
                raise ValueError("discrete_codes were given, so votes must include 'discrete_codes' (M, L).")
            sub_disc = _to_numpy(votes["discrete_codes"]).astype(np.int64)
            sub_disc = sub_disc.reshape(sub_disc.shape[0], sub_disc.shape[1], -1)  # (M, L, M_disc)
            if sub_disc.shape[:2] != sub_codes.shape[:2] or sub_disc.shape[2] != disc.shape[1]:
                raise ValueError(
                    "votes['discrete_codes'] must have shape (M, L) or (M, L, M_disc) matching votes['codes']."
                )
            if sub_disc.min() < 0 or np.any(sub_disc.max(axis=(0, 1)) >= disc_sizes):
                raise ValueError(
                    "votes['discrete_codes'] holds labels not seen in discrete_codes; use the same labelling."
                )
        else:
            sub_disc = np.zeros(sub_codes.shape[:2] + (0,), dtype=np.int64)  # (M, L, 0)
        # columns of the vote matrix: all factors when they are given, else 0..max(vote factor)
        if factors is not None:
            n_factors = _int_matrix(factors, "factors").shape[1]
        else:
            n_factors = int(vote_factor.max()) + 1
        m_total = len(vote_factor)
        if int(n_eval_votes) >= m_total:
            raise ValueError(f"n_eval_votes={int(n_eval_votes)} leaves no training votes out of {m_total}.")

    # Var_j / v_j for every vote and kept dim, then the argmin vote (supp. C)
    var_sub = np.concatenate(
        [_variance_continuous(sub_codes[:, :, kept], axis=1)]  # (M, D_kept)
        + [_variance_discrete(sub_disc[:, :, m], disc_sizes[m])[:, None] for m in keep_disc],  # (M, 1) each
        axis=1,
    )  # (M, J_kept)
    latents = [f"z{j}" for j in kept] + [f"c{m}" for m in keep_disc]
    n_train = m_total - int(n_eval_votes)
    result = {"kept_dims": kept, "latents": latents, "full_variance": v, "n_votes": n_train}
    if len(v) == 0:
        # Every dim collapsed: no vote can be cast; report chance, 1/K (supp. C).
        n_fixed = len(np.unique(vote_factor))
        result.update(score=1.0 / n_fixed, vote_matrix=np.zeros((0, n_factors), dtype=np.int64))
        return result
    winner = np.argmin(var_sub / v, axis=1)  # (M,) index into the kept latents
    vote_matrix = np.zeros((len(v), n_factors), dtype=np.int64)  # (J_kept, K)
    np.add.at(vote_matrix, (winner[:n_train], vote_factor[:n_train]), 1)
    result["vote_matrix"] = vote_matrix
    if int(n_eval_votes) == 0:
        result["score"] = _majority_vote_accuracy(vote_matrix)
        return result
    # Kim & Mnih: majority-vote classifier from training votes, accuracy on held-out votes
    classifier = np.where(vote_matrix.sum(axis=1) > 0, vote_matrix.argmax(axis=1), -1)  # (J_kept,)
    eval_matrix = np.zeros_like(vote_matrix)  # (J_kept, K)
    np.add.at(eval_matrix, (winner[n_train:], vote_factor[n_train:]), 1)
    result.update(
        score=float(np.mean(classifier[winner[n_train:]] == vote_factor[n_train:])),
        train_score=_majority_vote_accuracy(vote_matrix),
        eval_vote_matrix=eval_matrix,
        classifier=classifier,
    )
    return result
