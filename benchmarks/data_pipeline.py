"""Benchmark of the data path: ``data.batches`` throughput and the RAM of ``shapes``.

    python benchmarks/data_pipeline.py [--data-dir ../shared/data] [--steps 2000]

Prints, for mnist (test split, from --data-dir) and shapes at batch 64: load time,
ms per batch and images/s of ``batches`` (index permutation + ``Dataset.batch``), and
the peak RSS of a fresh process that imports torch and loads ``shapes`` (against the
same process importing torch only).  Target (issue 2): <= 1.5 ms per batch of 64, i.e.
<= 5 % of a ~30 ms JointVAE step; ``shapes`` must add <= 500 MB.  Nothing is asserted.
"""

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import data  # noqa: E402

# Run in a fresh interpreter (Linux /proc): resident set now (VmRSS) and its peak (VmHWM),
# in MB, after importing torch + data, then after loading shapes and rendering a batch.
_RSS_CHILD = """
import sys, time
sys.path.insert(0, {root!r})

def rss():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return [int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")]

import torch, data
before = rss()
t = time.perf_counter()
d = data.load_dataset("shapes")
d.batch(torch.arange(64))  # builds the sprite cache too
seconds = time.perf_counter() - t
print(*before, *rss(), seconds)
"""


def time_batches(dataset, batch_size, steps, seed=0):
    """Return (ms per batch, images per second) of data.batches over ``steps`` batches."""
    it = data.batches(dataset, batch_size, seed)
    for _ in range(20):  # warm-up: first permutation, sprite cache, allocator
        next(it)
    t = time.perf_counter()
    for _ in range(steps):
        next(it)
    dt = time.perf_counter() - t
    return 1e3 * dt / steps, steps * batch_size / dt


def shapes_rss():
    """(RSS, peak RSS) after import, (RSS, peak RSS) after loading shapes, load seconds."""
    code = _RSS_CHILD.format(root=ROOT)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return [float(v) for v in out.stdout.split()]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.path.join("..", "shared", "data"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    rows = []
    for name, split in (("mnist", "test"), ("shapes", "train")):
        t = time.perf_counter()
        try:
            d = data.load_dataset(name, split, data_dir=args.data_dir, download=False)
        except (FileNotFoundError, ValueError) as e:
            print(f"data_pipeline.py: skipping {name}: {e}")
            continue
        load_s = time.perf_counter() - t
        ms, ips = time_batches(d, args.batch_size, args.steps)
        rows.append((f"{name} ({split}, N={len(d)})", load_s, ms, ips))

    print(f"\nbatches(batch_size={args.batch_size}), {args.steps} steps, "
          f"torch threads={args.threads}; target <= 1.5 ms/batch")
    print(f"| data set | load s | ms / batch | images / s |\n|---|---:|---:|---:|")
    for label, load_s, ms, ips in rows:
        print(f"| {label} | {load_s:.2f} | {ms:.3f} | {ips:,.0f} |")

    rss0, hwm0, rss1, hwm1, seconds = shapes_rss()
    print(f"\nshapes RAM (fresh process, MB): after `import torch, data` RSS {rss0:.0f} "
          f"(peak {hwm0:.0f}); after load_dataset('shapes') + one batch ({seconds:.2f} s) "
          f"RSS {rss1:.0f} (peak {hwm1:.0f}); shapes adds {rss1 - rss0:.0f} MB "
          f"(target <= 500 MB)")


if __name__ == "__main__":
    main()
