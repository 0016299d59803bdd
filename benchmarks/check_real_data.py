"""Real-data checks run by .ci/run after pytest (offline, CPU, about a minute).

    python benchmarks/check_real_data.py --data-dir ../shared/data

1. MNIST test split and full Fashion-MNIST load from the torchvision layout with
   download=False: sizes, label counts, pixel range, 32x32 after the 28->32 resize.
2. A split whose files are missing (MNIST train images, absent offline) fails with
   one sentence that names the paths searched.
3. The JointVAE author's released weights, evaluated by jointvae.py exactly as a user
   would: MNIST digit-type accuracy 0.887 +- 0.005 (Dupont 2018 sec. 4.3 reports
   88.7 %), and Fashion-MNIST 0.450 (Hungarian) / 0.518 (majority vote) +- 0.005, the
   values measured with an independent implementation (../shared/README.md).
Exits non-zero on the first failed check.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import data  # noqa: E402
import jointvae  # noqa: E402

# Per-class counts of the official splits (public facts of the data sets).
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        raise SystemExit(1)


def check_loading(data_dir):
    t0 = time.perf_counter()
    d = data.load_dataset("mnist", split="test", data_dir=data_dir, download=False)
    check(len(d) == 10000 and d.image_size == (1, 32, 32), f"mnist test: {len(d)} images {d.image_size}")
    check(torch.bincount(d.labels).tolist() == MNIST_TEST_COUNTS, "mnist test label counts")
    x = d.batch(torch.arange(256))
    check(x.dtype == torch.float32 and 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.max()) > 0.9,
          "mnist batch is float32 in [0, 1]")
    for split, n in (("train", 60000), ("test", 10000)):
        f = data.load_dataset("fashion-mnist", split=split, data_dir=data_dir, download=False)
        check(len(f) == n and f.image_size == (1, 32, 32), f"fashion-mnist {split}: {len(f)} images")
        check(torch.bincount(f.labels).tolist() == [n // 10] * 10, f"fashion-mnist {split} label counts")
    try:
        data.load_dataset("mnist", split="train", data_dir=data_dir, download=False)
        check(False, "mnist train (images absent offline) should fail")
    except FileNotFoundError as err:
        msg = str(err)
        check("\n" not in msg and "train-images" in msg, f"missing split fails in one sentence: {msg[:110]}...")
    print(f"     loading checks took {time.perf_counter() - t0:.1f} s")


def check_released_weights(data_dir, name, dataset, expected):
    path = os.path.join(data_dir, "jointvae-official", name, "model.pt")
    if not os.path.isfile(path):
        check(False, f"released weights missing at {path}")
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        jointvae.main(["--dataset", dataset, "--data-dir", data_dir, "--no-download", "--eval-split", "test",
                       "--eval-only", "--checkpoint", path, "--out", out, "--no-progress", "--device", "cpu"])
        with open(os.path.join(out, "metrics.json")) as f:
            m = json.load(f)
        secs = time.perf_counter() - t0
    for key, value in expected.items():
        check(abs(m[key] - value) <= 0.005,
              f"released {name} weights: {key} = {m[key]:.4f} (expected {value:.3f} +- 0.005), {secs:.0f} s")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.path.join(ROOT, "..", "shared", "data"))
    args = p.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    check_loading(args.data_dir)
    check_released_weights(args.data_dir, "mnist", "mnist", {"accuracy_hungarian": 0.887})
    check_released_weights(args.data_dir, "fashion", "fashion-mnist",
                           {"accuracy_hungarian": 0.450, "accuracy_majority": 0.518})
    print("all real-data checks passed")


if __name__ == "__main__":
    main()
