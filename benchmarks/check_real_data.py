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
4. The procedural dSprites (``--dataset shapes``) against 100 real dSprites tiles
   (``dsprites-samples/tiles.npz``): each tile is matched to its nearest rendered sprite;
   per-shape area histograms, area / scale^2, the ellipse's axis ratio, centroid and
   occupied-pixel ranges are printed next to ours, and a PNG of every tile beside our
   rendering of its matched factors is written (``--figure``).
5. Every released model of ours (results/weights/manifest.json), evaluated through
   ``--pretrained``, scores the metrics its manifest records within 0.2 points.
Exits non-zero on the first failed check.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import data  # noqa: E402
import jointvae  # noqa: E402
import runs  # noqa: E402

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


def check_our_released_weights(data_dir, only=None):
    """Every file of results/weights/manifest.json, evaluated through --pretrained exactly as
    a user would, scores its recorded metrics within 0.2 points (float16 weights)."""
    import btcvae
    import cascadevae
    scripts = dict(jointvae=jointvae, btcvae=btcvae, cascadevae=cascadevae)
    entries = [e for e in runs.read_manifest() if only is None or e["dataset"] in only]
    if not entries:
        print("note: no released weights of ours in results/weights/ yet")
    for e in entries:
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            argv = ["--dataset", e["dataset"], "--seed", str(e["seed"]), "--pretrained", "--data-dir", data_dir,
                    "--no-download", "--out", out, "--no-progress", "--device", "cpu"]
            if e["name"] == "betavae":  # btcvae.py's beta-VAE baseline: the flag selects its file
                cfg = torch.load(os.path.join(runs.WEIGHTS_DIR, e["file"]), weights_only=True)["config"]
                argv += ["--beta-vae", str(cfg["beta_vae"])]
            if e.get("n_eval") and e["dataset"] in ("shapes", "dsprites"):
                argv += ["--eval-samples", str(e["n_eval"])]
            res = scripts[e["method"]].main(argv)
            secs = time.perf_counter() - t0
        for key in ("accuracy_hungarian", "accuracy_majority", "factor_vae_score", "mig"):
            want = e["metrics"].get(key)
            if want is None:
                continue
            check(res.get(key) is not None and abs(res[key] - want) <= 0.002,
                  f"our {e['file']}: {key} = {res[key]:.4f} (manifest {want:.4f} +- 0.002), {secs:.0f} s")


# --------------------------------------------------------------------------------------
# The procedural dSprites (`shapes`) against 100 real dSprites tiles
# --------------------------------------------------------------------------------------
# Facts measured on the same tiles (../shared/README.md): scale-1 areas (square, ellipse,
# heart), the ellipse's axis ratio, and the tiles' occupied rows 5..57 / columns 6..57.
REAL_AREA = (369.0, 290.0, 224.0)
REAL_ELLIPSE_RATIO = 1.75
AREA_BINS = np.arange(40, 401, 20)  # 20-px bins over the areas of every sprite size
_WINDOW = 32  # matching window around the centroid: holds every sprite


def _centroids(images):
    """Area centroids (B, 2) as (row, col) in pixel coordinates, pixel k covering [k, k+1)."""
    rows = np.arange(images.shape[1]) + 0.5  # (64,)
    mass = images.sum(axis=(1, 2)).astype(float)  # (B,)
    return np.stack([(images.sum(2) * rows).sum(1) / mass,
                     (images.sum(1) * rows).sum(1) / mass], axis=1)  # (B, 2)


def _windows(images, shifts=(0,)):
    """(B, 64, 64) -> float32 (B, S, 1024): the 32 x 32 window about each rounded centroid,
    moved by every (dy, dx) in shifts x shifts (S = len(shifts)^2) for the search."""
    pad = _WINDOW
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad)))  # (B, 128, 128)
    corner = np.floor(_centroids(images)).astype(int) + pad - _WINDOW // 2  # (B, 2)
    out = np.empty((len(images), len(shifts) ** 2, _WINDOW * _WINDOW), np.float32)  # (B, S, 1024)
    for b, (r, c) in enumerate(corner):
        for s, (dy, dx) in enumerate((dy, dx) for dy in shifts for dx in shifts):
            out[b, s] = padded[b, r + dy:r + dy + _WINDOW, c + dx:c + dx + _WINDOW].ravel()
    return out


def match_templates(tiles):
    """Nearest rendered sprite of each real tile, by pixel XOR after centring.

    Templates: every (shape, scale, orientation) of `shapes` at both sub-pixel phases
    (posX = posY = 0 and 16), windowed about their centroids; each tile's window is tried
    at the 9 one-pixel shifts around its centroid.  XOR counts come from one matrix
    product: |a xor b| = |a| + |b| - 2 a.b for binary a, b.
    Returns factor indices (100, 5) (position fitted afterwards, see fit_positions).
    """
    grid = np.array([[s, j, k, p, p] for s in range(3) for j in range(6) for k in range(40)
                     for p in (0, 16)])  # (1440, 5)
    templates = _windows(data.render_shapes(grid))[:, 0]  # (1440, 1024)
    windows = _windows(tiles, shifts=(-1, 0, 1)).reshape(-1, _WINDOW * _WINDOW)  # (900, 1024)
    xor = (windows.sum(1)[:, None] + templates.sum(1)[None, :]
           - 2 * windows @ templates.T)  # (900, 1440)
    best = xor.reshape(len(tiles), -1).argmin(1) % len(grid)  # (100,) best template per tile
    return grid[best]  # (100, 5)


def fit_positions(tiles, factors):
    """Given (shape, scale, orientation), the posX / posY pair within +-2 steps of the
    centroid's guess whose rendering has the smallest XOR with the tile.
    Returns (factors (100, 5), renderings (100, 64, 64), XOR pixel counts (100,))."""
    guess = np.round((_centroids(tiles) - 16) * 31 / 32).astype(int)  # (100, 2) posY, posX
    steps = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)]
    factors = factors.copy()
    best_img = np.empty_like(tiles)  # (100, 64, 64)
    best_xor = np.empty(len(tiles), np.int64)  # (100,)
    for b in range(len(tiles)):
        cand = np.repeat(factors[b:b + 1], len(steps), axis=0)  # (25, 5)
        cand[:, 4] = np.clip(guess[b, 0] + [d[0] for d in steps], 0, 31)
        cand[:, 3] = np.clip(guess[b, 1] + [d[1] for d in steps], 0, 31)
        imgs = data.render_shapes(cand)  # (25, 64, 64)
        xor = (imgs != tiles[b]).sum(axis=(1, 2))  # (25,)
        i = int(xor.argmin())
        factors[b], best_img[b], best_xor[b] = cand[i], imgs[i], xor[i]
    return factors, best_img, best_xor


def _axis_ratio(img):
    """sqrt of the eigenvalue ratio of the pixel covariance: a / b for an ellipse."""
    rows, cols = np.nonzero(img)
    eig = np.linalg.eigvalsh(np.cov(np.stack([cols, rows]).astype(float)))  # (2,) ascending
    return float(np.sqrt(eig[1] / eig[0]))


def _extent(images):
    """(row min, row max, col min, col max) of the pixels occupied in any of the images."""
    rows, cols = np.nonzero(images.any(axis=0))
    return rows.min(), rows.max(), cols.min(), cols.max()


def save_grid(tiles, ours, path):
    """PNG: 10 rows of 10 (real | ours) pairs, white 2-px borders, a grey bar in each pair."""
    n, side, b = len(tiles), tiles.shape[1], 2
    cols = 10
    rows = (n + cols - 1) // cols
    pair_w = 2 * side + 3 * b
    canvas = np.full((rows * (side + b) + b, cols * pair_w + b), 255, np.uint8)  # (H, W)
    for i in range(n):
        r, c = b + (i // cols) * (side + b), b + (i % cols) * pair_w
        canvas[r:r + side, c:c + side] = tiles[i] * 255
        canvas[r:r + side, c + side:c + side + b] = 128  # real | ours
        canvas[r:r + side, c + side + b:c + 2 * side + b] = ours[i] * 255
    from PIL import Image  # with torchvision; only here

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(canvas).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(path, optimize=True)
    return os.path.getsize(path)


def compare_shapes_with_real(tiles_path, figure_path, n_ours=20000, seed=0):
    """Compare `shapes` with the 100 real tiles; print the numbers, save the PNG, check."""
    t0 = time.perf_counter()
    if not os.path.isfile(tiles_path):
        check(False, f"real dSprites tiles missing at {tiles_path}")
    with np.load(tiles_path) as z:
        tiles = z["images"].astype(np.uint8)  # (100, 64, 64) {0, 1}
    check(tiles.ndim == 3 and tiles.shape[1:] == (64, 64) and tiles.max() == 1,
          f"real dSprites tiles: {tiles.shape[0]} binary 64x64 images")
    matched, ours, xor = fit_positions(tiles, match_templates(tiles))  # (100, 5), (100, 64, 64), (100,)
    shape = matched[:, 0]  # (100,)
    scale = data.SHAPE_SCALES[matched[:, 1]]  # (100,)
    area = tiles.sum(axis=(1, 2)).astype(float)  # (100,)

    rng = np.random.default_rng(seed)
    f = np.stack([rng.integers(0, n, n_ours) for n in data.FACTOR_SIZES], axis=1)  # (n_ours, 5)
    imgs = data.render_shapes(f)  # (n_ours, 64, 64)
    our_area = imgs.sum(axis=(1, 2)).astype(float)  # (n_ours,)

    counts = np.bincount(shape, minlength=3)
    print("     template match of the 100 real tiles (nearest of our 1,440 sprites): "
          + ", ".join(f"{data.SHAPE_NAMES[s]} {counts[s]}" for s in range(3)))
    print("     area histograms, 20-px bins from 40 to 400 px (ours: %d random images, "
          "scaled to the real count)" % n_ours)
    for s in range(3):
        real_h = np.histogram(area[shape == s], AREA_BINS)[0]
        ours_h = np.histogram(our_area[f[:, 0] == s], AREA_BINS)[0]
        ours_h = ours_h * counts[s] / max(ours_h.sum(), 1)
        print(f"     {data.SHAPE_NAMES[s]:>7} real " + " ".join(f"{v:3d}" for v in real_h))
        print(f"     {'':>7} ours " + " ".join(f"{v:3.0f}" for v in ours_h))
    print("     area / scale^2, median (min..max): real tiles | ours (random) | target; "
          "XOR / area of real vs ours at matched factors (median)")
    norm_ok = True
    our_norm = our_area / data.SHAPE_SCALES[f[:, 1]] ** 2  # (n_ours,) ours brought to scale 1
    for s in range(3):
        sel, mine = shape == s, f[:, 0] == s
        norm = area[sel] / scale[sel] ** 2  # (n_s,) real areas brought to scale 1
        mo = our_norm[mine]  # (n_ours_s,)
        print(f"     {data.SHAPE_NAMES[s]:>7} (n = {sel.sum():2d}): "
              f"{np.median(norm):5.1f} ({norm.min():.0f}..{norm.max():.0f})"
              f" | {np.median(mo):5.1f} ({mo.min():.0f}..{mo.max():.0f})"
              f" | {REAL_AREA[s]:.0f}; XOR / area {np.median(xor[sel] / area[sel]):.3f}")
        norm_ok &= abs(np.median(norm) / np.median(mo) - 1) < 0.05
    ell = shape == 1
    real_ratio = np.array([_axis_ratio(t) for t in tiles[ell]])  # (n_ellipse,)
    our_ratio = np.array([_axis_ratio(t) for t in ours[ell]])
    print(f"     ellipse axis ratio (second moments): real {real_ratio.mean():.3f} +- {real_ratio.std():.3f},"
          f" ours at the matched factors {our_ratio.mean():.3f} +- {our_ratio.std():.3f}"
          f" (target {REAL_ELLIPSE_RATIO})")
    hrt = shape == 2
    real_h = np.array([_axis_ratio(t) for t in tiles[hrt]])  # (n_heart,)
    our_h = np.array([_axis_ratio(t) for t in ours[hrt]])
    print(f"     heart second-moment ratio (lobe axis / tip axis): real {real_h.mean():.3f} +- {real_h.std():.3f},"
          f" ours at the matched factors {our_h.mean():.3f} +- {our_h.std():.3f}")
    real_c = _centroids(tiles)  # (100, 2)
    sym = shape != 2  # square and ellipse: the centroid is the sprite's centre
    ours_c = _centroids(imgs[:6400])  # (6400, 2)
    sample_ext = np.array([_extent(s) for s in imgs[:6400].reshape(64, 100, 64, 64)])  # (64, 4)
    sample_c = np.array([[c[:, 0].min(), c[:, 0].max(), c[:, 1].min(), c[:, 1].max()]
                         for c in ours_c.reshape(64, 100, 2)])  # (64, 4)
    print("     centroid ranges (px, pixel k covers [k, k+1)): real rows %.2f..%.2f cols %.2f..%.2f "
          "(square + ellipse: rows %.2f..%.2f cols %.2f..%.2f); ours, median of 64 samples of 100: "
          "rows %.2f..%.2f cols %.2f..%.2f"
          % (real_c[:, 0].min(), real_c[:, 0].max(), real_c[:, 1].min(), real_c[:, 1].max(),
             real_c[sym, 0].min(), real_c[sym, 0].max(), real_c[sym, 1].min(), real_c[sym, 1].max(),
             *np.median(sample_c, axis=0)))
    real_ext = _extent(tiles)
    print("     occupied pixels: real rows %d..%d cols %d..%d; ours, median of 64 samples of 100: "
          "rows %g..%g cols %g..%g; ours over %d images: rows %d..%d cols %d..%d"
          % (*real_ext, *np.median(sample_ext, axis=0), n_ours, *_extent(imgs)))
    print(f"     real tile vs ours at its matched factors: XOR median {np.median(xor / area):.3f} "
          f"of the tile's pixels (90th percentile {np.percentile(xor / area, 90):.3f})")
    size = save_grid(tiles, ours, figure_path)
    print(f"     {figure_path}: real | ours (matched factors), {size / 1e3:.0f} KB; "
          f"{time.perf_counter() - t0:.1f} s")
    # Checks, with margins over what the calibrated renderer measures (see data.render_shapes).
    check(all(20 <= c <= 47 for c in counts), "template match finds all three shapes in dSprites' "
          "1/3 proportions (binomial range for 100 tiles)")
    check(norm_ok, "per shape, the real tiles' median area / scale^2 is within 5 % of ours")
    check(abs(real_ratio.mean() - our_ratio.mean()) < 0.05, "ellipse axis ratios agree within 0.05")
    check((abs(np.median(sample_ext, axis=0) - real_ext) <= 1.5).all(),
          "occupied rows / columns of 100 of ours are within 1.5 px of the real tiles' (medians)")
    check(np.median(xor / area) < 0.2, "real tiles differ from ours at their matched factors by < 20 % "
          "of their pixels (median)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.path.join(ROOT, "..", "shared", "data"))
    p.add_argument("--figure", default=os.path.join(ROOT, "results", "shapes_vs_dsprites.png"),
                   help="where check 4 writes real | ours tiles (PNG)")
    args = p.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    check_loading(args.data_dir)
    check_released_weights(args.data_dir, "mnist", "mnist", {"accuracy_hungarian": 0.887})
    check_released_weights(args.data_dir, "fashion", "fashion-mnist",
                           {"accuracy_hungarian": 0.450, "accuracy_majority": 0.518})
    check_our_released_weights(args.data_dir)
    compare_shapes_with_real(os.path.join(args.data_dir, "dsprites-samples", "tiles.npz"), args.figure)
    print("all real-data checks passed")


if __name__ == "__main__":
    main()
