"""Time btcvae.log_aggregate_posterior (the readable chunked logsumexp of eq. 3's log q(z)
over a whole data set) against btcvae.log_aggregate_posterior_fast (a cache-blocked exp2
kernel of the same two sums, which the evaluation runs), and check that they agree.

    python benchmarks/aggregate_posterior.py                 # Q = 500 queries, N = 100,000, D = 10
    python benchmarks/aggregate_posterior.py --n 737280      # dSprites' N
"""

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import btcvae  # noqa: E402

def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--q", type=int, default=500)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--d", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(a.n, a.d, generator=g)
    logvar = torch.rand(a.n, a.d, generator=g) * 4 - 5              # sd 0.08 .. 0.6
    z = mu[:a.q] + torch.exp(0.5 * logvar[:a.q]) * torch.randn(a.q, a.d, generator=g)
    t0 = time.perf_counter()
    ref = btcvae.log_aggregate_posterior(z, mu, logvar)
    t_readable = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast = btcvae.log_aggregate_posterior_fast(z, mu, logvar)
    t_fast = time.perf_counter() - t0
    err = max(float((ref[0] - fast[0]).abs().max()), float((ref[1] - fast[1]).abs().max()))
    per = 1e9 / (a.q * a.n * a.d)
    print(f"Q={a.q} N={a.n} D={a.d}, {a.threads} thread(s): readable logsumexp {t_readable:.2f} s "
          f"({t_readable * per:.2f} ns/density), exp2 kernel {t_fast:.2f} s ({t_fast * per:.2f} ns/density), "
          f"x{t_readable / t_fast:.1f}; largest difference {err:.2e} nats")


if __name__ == "__main__":
    main()
