"""Time and peak memory of every metric in metrics.py on the full dSprites-sized grid.

The grid is the 737,280-row factor grid of dSprites / data.py's `shapes`
(shape 3, scale 6, orientation 40, posX 32, posY 32; row-major, posY fastest),
built here directly with numpy, with random codes: 10 continuous dims (means and
log-variances) and 1 discrete code with 3 values. The issue's target is <= 3 min per
metric on a 2-core CPU.

Each metric runs in a fresh process (so the peak resident memory it reports is its
own): "peak RSS" is the process high-water mark, "+RSS" its growth over the process
that only holds the inputs.

    python benchmarks/metrics.py                 # all metrics, the table at the end
    python benchmarks/metrics.py --only mig_sampling mig_sampling_chen
    OMP_NUM_THREADS=1 python benchmarks/metrics.py   # one core

Shape legend: N grid rows, D continuous dims, K factors, M votes, L samples per vote.
"""

import argparse
import importlib.util
import math
import multiprocessing
import os
import resource
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FACTOR_SIZES = (3, 6, 40, 32, 32)  # dSprites: shape, scale, orientation, posX, posY
N_CONT, N_CLASSES = 10, 3

# name -> what is timed (the source of each call is in `_run_metric`)
METRICS = {
    "cluster_accuracy": "cluster_accuracy(discrete code, shape), hungarian + majority",
    "kl_per_unit": "kl_per_unit(mu, logvar)",
    "mig_sampling": "mig(..., method='sampling'), all 5 factors + discrete code (defaults)",
    "mig_sampling_chen": "mig(..., method='sampling', factor_subset=[1, 2, 3, 4]) (Chen et al. Table 2)",
    "mig_histogram": "mig(..., method='histogram'), all 5 factors + discrete code",
    "factor_vae_score": "factor_vae_score(codes, factors, kl, discrete), M=800, L=100",
    "factor_vae_grid_votes": "grid_votes + factor_vae_score(votes=...), M=800, L=100",
}


def _load_metrics():
    """The repository's metrics.py (this file is also called metrics.py, so load it by path)."""
    spec = importlib.util.spec_from_file_location("metrics", os.path.join(ROOT, "metrics.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB -> MiB


def _inputs(seed):
    """The full factor grid and random codes on it."""
    sizes = np.array(FACTOR_SIZES)
    # row-major grid, last factor fastest: factor k of row i = (i // prod(sizes[k+1:])) % sizes[k]
    strides = np.concatenate([np.cumprod(sizes[::-1])[::-1][1:], [1]])  # (K,)
    rows = np.arange(int(sizes.prod()))  # (N,)
    factors = (rows[:, None] // strides) % sizes  # (N, K)
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal((len(rows), N_CONT)).astype(np.float32)  # (N, D)
    logvar = rng.uniform(-4.0, 0.0, (len(rows), N_CONT)).astype(np.float32)  # (N, D)
    disc = rng.integers(0, N_CLASSES, len(rows))  # (N,)
    return factors, mu, logvar, disc


def _run_metric(name, seed, queue):
    """Child process: build the inputs, time one metric, report time and memory."""
    metrics = _load_metrics()
    factors, mu, logvar, disc = _inputs(seed)
    base = _peak_rss_mib()
    t0 = time.perf_counter()
    if name == "cluster_accuracy":
        out = (metrics.cluster_accuracy(disc, factors[:, 0]),
               metrics.cluster_accuracy(disc, factors[:, 0], mapping="majority"))
        value = "hungarian %.4f, majority %.4f" % out
    elif name == "kl_per_unit":
        value = "mean KL %.4f" % metrics.kl_per_unit(mu, logvar).mean()
    elif name == "mig_sampling":  # the heaviest call: every factor, the default sample counts
        value = "MIG %.4f" % metrics.mig(mu, factors, logvar=logvar, discrete_codes=disc, seed=seed)["mig"]
    elif name == "mig_sampling_chen":
        value = "MIG %.4f" % metrics.mig(mu, factors, logvar=logvar, discrete_codes=disc, seed=seed,
                                         factor_subset=[1, 2, 3, 4])["mig"]
    elif name == "mig_histogram":
        value = "MIG %.4f" % metrics.mig(mu, factors, discrete_codes=disc, method="histogram")["mig"]
    elif name == "factor_vae_score":
        kl = metrics.kl_per_unit(mu, logvar)
        value = "score %.4f" % metrics.factor_vae_score(mu, factors, kl_per_dim=kl, discrete_codes=disc,
                                                         seed=seed)["score"]
    elif name == "factor_vae_grid_votes":
        vote_factor, idx = metrics.grid_votes(FACTOR_SIZES, 800, 100, seed)
        flat = idx.reshape(-1).numpy()  # (M*L,) grid rows; a method file encodes these images
        votes = {"factor": vote_factor, "codes": mu[flat].reshape(800, 100, N_CONT),
                 "discrete_codes": disc[flat].reshape(800, 100)}
        out = metrics.factor_vae_score(mu, factors, discrete_codes=disc, votes=votes)
        value = "score %.4f" % out["score"]
    seconds = time.perf_counter() - t0
    queue.put((seconds, _peak_rss_mib(), _peak_rss_mib() - base, value))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(METRICS), default=list(METRICS),
                        help="metrics to time (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    ctx = multiprocessing.get_context("spawn")
    print(f"grid {FACTOR_SIZES} = {math.prod(FACTOR_SIZES):,} rows, "
          f"{N_CONT} continuous + 1 discrete ({N_CLASSES} values) random codes; "
          f"torch threads {torch.get_num_threads()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"{os.cpu_count()} CPUs", flush=True)
    rows = []
    for name in args.only:
        queue = ctx.Queue()
        proc = ctx.Process(target=_run_metric, args=(name, args.seed, queue))
        proc.start()
        proc.join()  # the result is a few numbers, so the child never blocks on the queue
        if proc.exitcode != 0:
            raise SystemExit(f"benchmarks/metrics.py: error: {name} failed (exit code {proc.exitcode}).")
        seconds, peak, grown, value = queue.get()
        rows.append((name, seconds, peak, grown, value))
        print(f"  {name}: {seconds:.2f} s, peak RSS {peak:.0f} MiB (+{grown:.0f}), {value}", flush=True)

    print()
    print("| metric | what | time (s) | peak RSS (MiB) | +RSS (MiB) | value on random codes |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for name, seconds, peak, grown, value in rows:
        print(f"| {name} | {METRICS[name]} | {seconds:.2f} | {peak:.0f} | {grown:.0f} | {value} |")


if __name__ == "__main__":
    main()
