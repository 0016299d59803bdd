"""Data sets as in-memory tensors, and a resumable shuffled batch iterator.

One entry point, ``load_dataset(name, split, data_dir, download, channels)``, returns a
small :class:`Dataset`; ``batches(dataset, batch_size, seed)`` yields shuffled batches
forever (the papers count iterations, not epochs).  No equation of the papers lives
here; this module only decides which pixels the models see.

Shape legend (as everywhere in the repository): B batch, N data set size, K factors,
C, H, W image.  Images leave :meth:`Dataset.batch` as float32 in [0, 1], on the CPU.

Data sets and their layout on disk
----------------------------------
  name           image_size          source (files in the torchvision / DeepMind layout)
  mnist          (1, 32, 32)         <data_dir>/MNIST/raw/{train,t10k}-images-idx3-ubyte[.gz]
                                     and .../{train,t10k}-labels-idx1-ubyte[.gz]
  fashion-mnist  (1, 32, 32)         <data_dir>/FashionMNIST/raw/... (the same names)
  shapes         (1, 64, 64)         generated here: a procedural dSprites (nothing on disk)
  dsprites       (1, 64, 64)         <data_dir>/dsprites/<file> or <data_dir>/<file>, where
                                     <file> = dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz
  images         (channels, 64, 64)  every .png/.jpg/.jpeg below the folder <data_dir>

* MNIST / Fashion-MNIST: the IDX files are read with numpy (gzip or plain, the layout
  ``torchvision.datasets`` downloads into) and resized 28 -> 32 ONCE at load, with
  exactly the arithmetic of ``transforms.Resize(32)`` on a PIL image (PIL's fixed-point
  bilinear filter), so the pixels equal ``ToTensor()(Resize(32)(img))`` -- the
  preprocessing of the JointVAE author's code, whose released weights we load.  They are
  stored as one uint8 tensor (N, 1, 32, 32) (10 MB for 10,000 images) and turned into
  float32 / 255 per batch.  A split loads when ITS two files are present, whatever the
  other split has (``../shared/data/MNIST`` has the test images only).
* ``shapes``: see :func:`render_shapes` -- the dSprites factor grid, rendered on demand
  from sprites whose sizes and placement are calibrated to real dSprites tiles.
* ``dsprites``: DeepMind's official file; its 737,280 images are kept bit-packed
  (``np.packbits``, 377 MB instead of 3 GB) and unpacked per batch.
* ``images``: any folder (Chairs, CelebA): each image is resized so its shorter side is
  64 and centre-cropped to 64 x 64 (``Resize(64)`` + ``CenterCrop(64)`` on PIL), converted
  to grey (``channels=1``) or RGB (``channels=3``), and stored as one uint8 tensor.

Offline behaviour
-----------------
Nothing is downloaded unless files are missing AND ``download=True``.  Then MNIST and
Fashion-MNIST go through torchvision's own downloader (``root=data_dir``) and dSprites
through ``urllib`` from DeepMind's GitHub repository.  With ``download=False``, or when
the download fails (no network), a ``FileNotFoundError`` says in one sentence which
paths were searched and how to obtain the files; the library's stack trace is dropped
(``raise ... from None``) because it only says "no network".  A file that is present but
corrupt (bad magic number, wrong dimensions, truncated, bad gzip/zip) raises a
``ValueError`` naming the file.  Without network, use ``--data-dir ../shared/data``
(MNIST test split, full Fashion-MNIST) or the generated ``shapes``.

``split`` is "train" or "test" for every name; ``shapes``, ``dsprites`` and ``images``
have a single set of images and ignore it (dSprites has no test split; the papers train
and evaluate disentanglement on the whole grid).

Nothing runs at import time: the ``shapes`` sprites are built on first use.
"""

import abc
import functools
import gzip
import os
import urllib.request
import warnings
import zipfile
import zlib

import numpy as np
import torch

DATASETS = ("mnist", "fashion-mnist", "shapes", "dsprites", "images")
SPLITS = ("train", "test")


# --------------------------------------------------------------------------------------
# The data set object
# --------------------------------------------------------------------------------------
class Dataset(abc.ABC):
    """A data set held in memory; images are produced per batch by ``_uint8``.

    Attributes: ``name``, ``split``, ``image_size`` (C, H, W), ``labels`` (N,) int64 or
    None, ``factors`` (N, K) int64 or None, ``factor_names``, ``factor_sizes``.
    """

    def __init__(self, name, split, image_size, n, divisor, labels=None, factors=None,
                 factor_names=None, factor_sizes=None):
        self.name = name
        self.split = split
        self.image_size = tuple(image_size)
        self._n = int(n)
        # uint8 -> [0, 1]: / 255 for grey levels (as ToTensor does), / 1 for binary sprites
        self._divisor = divisor
        self.labels = labels  # (N,) int64 or None
        self.factors = factors  # (N, K) int64 or None
        self.factor_names = factor_names
        self.factor_sizes = factor_sizes

    def __len__(self):
        return self._n

    def __repr__(self):
        return (f"Dataset(name={self.name!r}, split={self.split!r}, n={self._n}, "
                f"image_size={self.image_size}, factors={self.factor_names})")

    def batch(self, indices):
        """Images ``indices`` (B,) -> float32 tensor (B, C, H, W) in [0, 1] on the CPU."""
        idx = torch.as_tensor(indices, dtype=torch.long)  # (B,)
        if idx.dim() != 1:
            raise ValueError(f"batch() takes a 1-D tensor of indices, got shape "
                             f"{tuple(idx.shape)}.")
        x = self._uint8(idx).float()  # (B, C, H, W)
        if self._divisor != 1:
            x.div_(self._divisor)
        return x

    def index_of(self, factor_values):
        """Factor indices (B, K) -> data set indices (B,); only for the factor-grid sets."""
        raise ValueError(f"data set {self.name!r} has no factor grid; index_of() works for "
                         f"'shapes' and 'dsprites' only.")

    @abc.abstractmethod
    def _uint8(self, idx):
        """Indices (B,) -> uint8 images (B, C, H, W); each data set stores them its own way."""


class _TensorDataset(Dataset):
    """Images stored as one uint8 tensor (N, C, H, W): mnist, fashion-mnist, images."""

    def __init__(self, name, split, images, labels=None):
        super().__init__(name, split, images.shape[1:], images.shape[0], 255, labels)
        self.images = images  # (N, C, H, W) uint8

    def _uint8(self, idx):
        return self.images[idx]  # (B, C, H, W)


# --------------------------------------------------------------------------------------
# Factor grids (shapes, dsprites)
# --------------------------------------------------------------------------------------
FACTOR_NAMES = ["shape", "scale", "orientation", "posX", "posY"]
FACTOR_SIZES = [3, 6, 40, 32, 32]
N_GRID = int(np.prod(FACTOR_SIZES))  # 737,280
# Row-major strides over the grid: posY fastest, as in dSprites' latents_classes.
_STRIDES = torch.tensor([int(np.prod(FACTOR_SIZES[k + 1:])) for k in range(5)])  # (K,)


def _check_factor_indices(f, sizes=FACTOR_SIZES):
    """Shared validation of a (B, K) array of factor indices; returns it as int64 numpy."""
    f = np.asarray(f)
    integer = np.issubdtype(f.dtype, np.integer) or f.size == 0
    if f.ndim != 2 or f.shape[1] != len(sizes) or not integer:
        raise ValueError(f"factor indices must be an integer array of shape (B, {len(sizes)}), "
                         f"got {f.dtype} {f.shape}.")
    f = f.astype(np.int64, copy=False)  # (B, K)
    if ((f < 0) | (f >= np.asarray(sizes))).any():
        raise ValueError(f"factor indices out of range: column k must lie in [0, size_k) "
                         f"with sizes {list(sizes)}.")
    return f


def _grid_index(factor_values):
    """Ravel factor indices (B, K) into the row-major grid index (B,), validated."""
    f = torch.from_numpy(_check_factor_indices(factor_values))  # (B, K)
    return (f * _STRIDES).sum(1)  # (B,)


def _grid_factors():
    """All grid rows in row-major order: (N_GRID, K) int64, posY fastest."""
    i = torch.arange(N_GRID)  # (N,)
    sizes = torch.tensor(FACTOR_SIZES)  # (K,)
    return (i[:, None] // _STRIDES) % sizes  # (N, K)


# --------------------------------------------------------------------------------------
# shapes: a procedural dSprites
# --------------------------------------------------------------------------------------
SHAPE_NAMES = ("square", "ellipse", "heart")
# The class names of each labelled data set, in label order (torchvision's for Fashion-MNIST).
CLASS_NAMES = {
    "mnist": tuple(str(k) for k in range(10)),
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                      "Bag", "Ankle boot"),
    "shapes": SHAPE_NAMES, "dsprites": SHAPE_NAMES,
}
SHAPE_SCALES = np.linspace(0.5, 1.0, 6)  # dSprites' scale values
# dSprites' 40 orientations, endpoints included: index 39 (2 pi) is the same angle as 0.
SHAPE_ORIENTATIONS = np.linspace(0.0, 2 * np.pi, 40)
SHAPE_POSITIONS = np.linspace(0.0, 1.0, 32)  # dSprites' posX / posY values

# The calibration targets, measured on 100 real dSprites tiles (../shared/README.md,
# "Facts measured from these tiles"; +-1 px, the factor values being inferred):
_AREA = (369.0, 290.0, 224.0)  # px at scale 1 (square, ellipse, heart); ~ scale^2
_ELLIPSE_RATIO = 1.75  # major / minor semi-axis, from second moments
_CENTRE_FIRST, _CENTRE_SPAN = 16.0, 32.0  # sprite centre 16 -> 48 px as pos goes 0 -> 1

_CANVAS = 64  # image side
_SPRITE = 32  # sprite box side; the box centre is a pixel corner at sub-pixel phase 0
_SUPERSAMPLE = 4  # 4 x 4 samples per pixel; a pixel is on when >= half of them are inside
_PHASES = 2  # sub-pixel placement in steps of 1 / _PHASES px (= 2 samples)
# Shape sizes at scale 1 in pixels, solved from _AREA and _ELLIPSE_RATIO:
_SQUARE_HALF = np.sqrt(_AREA[0]) / 2  # 19.21 x 19.21 square; half-diagonal 13.58
_ELLIPSE_AXES = (np.sqrt(_AREA[1] * _ELLIPSE_RATIO / np.pi),  # semi-axes 12.71 x 7.26:
                 np.sqrt(_AREA[1] / (_ELLIPSE_RATIO * np.pi)))  # pi a b = 290, a / b = 1.75
# The heart's pixels per curve unit follow from its area (_heart_moments): 7.87 px, an
# 18.1 x 20.3 px heart.  Every shape stays within 13.6 px of its centre at any angle, and
# the centre sits at most 1/2 px off the box centre, so in the 32 px box (radius 16) the
# outermost pixel ring is always empty: nothing is clipped.


def _heart_inside(u, v):
    """Inside of the heart curve a^2 + (v - sqrt|a|)^2 = 1 with a = u / 1.15 (v up).

    Two unit-circle lobes lifted by sqrt|a|: a deep notch at the top (v = 1 against lobes
    at 1.58) and a sharp point at the bottom (v = -1), which keep it a recognisable heart
    even at scale 0.5 (9 x 10 px); the 1.15 widens it to about its height.
    """
    a = u / 1.15
    return a * a + (v - np.sqrt(np.abs(a))) ** 2 <= 1


@functools.lru_cache(maxsize=1)
def _heart_moments():
    """(area, v of the area centroid) of the heart curve in its own units (~3.61, ~0.61).

    The area sets the pixel size of a unit (224 px at scale 1); we centre the heart on its
    centroid so that, like the square and the ellipse, it rotates about and is positioned
    by its centre of mass.
    """
    # Midpoint sums on a 0.005-unit grid: area and centroid to ~1e-5 (a 1601-point grid
    # agrees to that), with 5 MB temporaries.  The curve lies in |u| <= 1.15, -1 <= v < 1.58.
    t = np.linspace(-2.0, 2.0, 801)
    inside = _heart_inside(t[None, :], t[:, None])  # (801, 801): rows index v
    cell = (t[1] - t[0]) ** 2
    return float(inside.sum() * cell), float((inside * t[:, None]).sum() / inside.sum())


def _placement():
    """posX (or posY) index -> (box origin (32,) int64, sub-pixel phase (32,) int64).

    The centre 16 + 32 * pos (../shared/README.md), in pixel coordinates with pixel k
    covering [k, k + 1), rounded to 1 / _PHASES px: a centre at n + p / _PHASES puts the
    box origin at n - 16 and uses the sprite rasterised at phase p.  Rounding moves the
    centre by at most 1/4 px; 32 / 31 px per step is not a whole number of pixels.
    """
    centre = _CENTRE_FIRST + _CENTRE_SPAN * SHAPE_POSITIONS  # (32,) px, 16 ... 48
    q = np.round(centre * _PHASES).astype(np.int64)  # (32,) in 1 / _PHASES px; no ties
    return q // _PHASES - _SPRITE // 2, q % _PHASES


def _block_sums(a, k):
    """Sums over k x k blocks of the last two axes: (..., H, W) -> uint8 (..., H / k, W / k).

    k^2 strided adds, ~10 x faster than a reshape + sum over two small axes."""
    out = np.zeros(a.shape[:-2] + (a.shape[-2] // k, a.shape[-1] // k), np.uint8)
    for i in range(k):
        for j in range(k):
            out += a[..., i::k, j::k]
    return out


@functools.lru_cache(maxsize=1)
def _sprite_bank():
    """All 3 x 6 x 40 sprites at the 2 x 2 sub-pixel phases, bit-packed, built once:
    uint8 (3, 6, 40, _PHASES, _PHASES, 128), row-major bits of the (32, 32) box.

    Index [shape, scale, orientation, phase x, phase y]: the shape centred at
    (16 + phase x / 2, 16 + phase y / 2) px of the box (x right, y down).  A half-pixel
    shift is exactly 2 samples, so each orientation is sampled ONCE on a grid 2 samples
    wider than the box and the 4 phases are 4 slices of it: the phases differ by the
    placement of the pixel grid, not by new floating-point rounding.  Orientation 39
    (2 pi) is reduced to 0 before rasterising, so it renders bit for bit as orientation 0.
    Packed, 0.37 MB (the unpacked 32 x 32 boxes would be 2.9 MB).
    """
    ss, shift = _SUPERSAMPLE, _SUPERSAMPLE // _PHASES  # shift: samples per phase step
    pad = shift * (_PHASES - 1)  # the grid is this many samples wider than the box
    n = _SPRITE * ss + pad  # samples per side
    # Sample coordinates in pixels relative to the shape centre; sample j of the grid is
    # sample j - pad of a phase-0 box, so t[pad:] is the phase-0 box and t[pad - p * shift:]
    # the box whose centre lies p / _PHASES px further right (down).
    t = (np.arange(n) - pad + 0.5) / ss - _SPRITE / 2  # (n,)
    x = t[None, None, :]  # (1, 1, n) columns, to the right
    y = -t[None, :, None]  # (1, n, 1) rows run down the image, y runs up
    theta = np.mod(SHAPE_ORIENTATIONS, 2 * np.pi)[:, None, None]  # (40, 1, 1); [39] == 0
    c, s = np.cos(theta), np.sin(theta)
    heart_area, heart_v0 = _heart_moments()
    heart_unit = np.sqrt(_AREA[2] / heart_area)  # px per curve unit
    bank = np.empty((3, 6, 40, _PHASES, _PHASES, _SPRITE * _SPRITE // 8), np.uint8)
    for j, scale in enumerate(SHAPE_SCALES):
        for o in range(0, 40, 8):  # 8 orientations at a time: ~1 MB temporaries
            k = slice(o, o + 8)
            # Rotate the sample points by -theta, i.e. the shape by +theta
            # (counter-clockwise on screen); divide by scale to use the scale-1 shape.
            u = (c[k] * x + s[k] * y) / scale  # (8, n, n)
            v = (-s[k] * x + c[k] * y) / scale  # (8, n, n)
            inside = (
                np.maximum(np.abs(u), np.abs(v)) <= _SQUARE_HALF,
                (u / _ELLIPSE_AXES[0]) ** 2 + (v / _ELLIPSE_AXES[1]) ** 2 <= 1,
                _heart_inside(u / heart_unit, v / heart_unit + heart_v0),
            )  # 3 x (8, n, n) bool
            for shape in range(3):
                # Samples inside per (shift x shift) cell, counted once for all phases.
                cells = _block_sums(inside[shape], shift)  # (8, n / shift, n / shift)
                for px in range(_PHASES):
                    for py in range(_PHASES):
                        # The phase-0 box starts pad samples (_PHASES - 1 cells) into the
                        # grid; phase p starts p cells earlier: the centre is p cells on.
                        c0, r0 = _PHASES - 1 - px, _PHASES - 1 - py
                        box = cells[:, r0:r0 + _SPRITE * _PHASES, c0:c0 + _SPRITE * _PHASES]
                        hits = _block_sums(box, _PHASES)  # (8, 32, 32), out of ss * ss
                        sprite = 2 * hits >= ss * ss  # (8, 32, 32): >= half the 16 samples
                        bank[shape, j, k, px, py] = np.packbits(sprite.reshape(8, -1), axis=1)
    bank.setflags(write=False)  # shared by every call: nobody may modify it
    return bank


def render_shapes(factor_indices):
    """Render procedural dSprites: factor indices (B, 5) -> uint8 images (B, 64, 64) in {0, 1}.

    Columns (shape, scale, orientation, posX, posY) index the dSprites values: shape in
    (square, ellipse, heart), scale ``linspace(0.5, 1, 6)``, orientation
    ``linspace(0, 2 pi, 40)`` (counter-clockwise on screen; index 39 is index 0 again),
    posX / posY ``linspace(0, 1, 32)`` (posX left to right, posY top to bottom, i.e. array
    order).  Pure: same input, same output, no state but a cache of the 2,880 sprites
    built on the first call (~0.2 s, 0.37 MB bit-packed).

    Geometry, calibrated to 100 real dSprites tiles (../shared/README.md): areas at
    scale 1 of 369 (square, 19.2 px side), 290 (ellipse, semi-axes 12.71 x 7.26, ratio
    1.75) and 224 px (heart, 18.1 x 20.3 px), times scale^2; the sprite's area centroid
    at 16 + 32 * pos px (pixel k covers [k, k + 1)), so 16 -> 48 over the 32 positions,
    rounded to half a pixel (phase 0: on a pixel corner, 1/2: on a pixel centre, per
    axis).  Each sprite is rasterised once per phase in a 32 x 32 box and placed by
    integer translation.  Pixels are on when at least half of a 4 x 4 supersampling grid
    lies inside the shape.

    How this still differs from DeepMind's dSprites (we do not have their renderer's
    code; numbers measured on the 100 real tiles, ``benchmarks/check_real_data.py``):
    * outlines and rasterisation: each real tile matched to its nearest sprite of ours
      (shape, scale, orientation, then position) still differs in a median 5.0 % of its
      pixels (90th percentile 14 %): squares 3.8 %, ellipses 4.1 %, hearts 11.2 %.
      Their hearts are broader across the lobes (second-moment axis ratio 1.165 +-
      0.030 against our 1.052 +- 0.023) with a shallower notch (~2 px deep at scale 1
      against our 4.6); their rotated edges are more ragged (single-pixel steps);
    * areas: ours at scale 1, averaged over orientations and both phases, are 372.3 /
      292.3 / 226.7 px (+0.9 / +0.8 / +1.2 % of the targets); real area / scale^2 has
      medians 367.3 / 288.9 / 225.0.  One image varies with orientation and phase
      (square 361..396, ellipse 286..298, heart 224..229 at scale 1): an axis-aligned
      square's edges fall 0.6 px into a pixel, so it is 20 x 20 px at phase 0 and
      19 x 19 at phase 1/2.  Theirs vary less: 8 of the 9 real scale-0.7 squares have
      180..182 px (the near-axis-aligned one 173);
    * the ellipse's axis ratio per image: ours 1.745 +- 0.048, real 1.766 +- 0.040 (26
      tiles at their matched factors); the mean over orientations is 1.72..1.74 at
      every scale;
    * positions: our centre is rounded to half a pixel (at most 1/4 px off 16 + 32 pos;
      their placement rule is unknown); the direction of rotation (ours counter-
      clockwise) and the heart's rotation centre (ours its centroid) cannot be read off
      unlabelled tiles (the template match fits either);
    * extent: 100 random images of ours occupy (median of 64 such samples) rows 6..57,
      columns 5..58, the 100 real tiles rows 5..57, columns 6..57; over the whole grid
      ours reach 3..60 (a scale-1 square at 45 degrees at an extreme position; no such
      tile is among the 100, so this is neither confirmed nor ruled out).
    The factor grid, its row-major order (posY fastest) and its size are dSprites' own.
    """
    f = _check_factor_indices(factor_indices)  # (B, 5)
    origin, phase = _placement()  # (32,), (32,)
    x0, y0 = origin[f[:, 3]], origin[f[:, 4]]  # (B,), (B,) box origins on the canvas
    bank = _sprite_bank()  # (3, 6, 40, 2, 2, 128) bit-packed
    packed = bank[f[:, 0], f[:, 1], f[:, 2], phase[f[:, 3]], phase[f[:, 4]]]  # (B, 128)
    sprites = np.unpackbits(packed, axis=1).reshape(-1, _SPRITE, _SPRITE)  # (B, 32, 32)
    out = np.zeros((f.shape[0], _CANVAS, _CANVAS), np.uint8)  # (B, 64, 64)
    # A Python loop of B slice copies (~1 us each) beats building (B, 32, 32) index arrays.
    for b, (c0, r0) in enumerate(zip(x0.tolist(), y0.tolist())):
        out[b, r0:r0 + _SPRITE, c0:c0 + _SPRITE] = sprites[b]
    return out


class _ShapesDataset(Dataset):
    """The 737,280-image procedural dSprites grid; images rendered per batch."""

    def __init__(self, split):
        factors = _grid_factors()  # (N, 5), 30 MB; the images are never materialised
        super().__init__("shapes", split, (1, _CANVAS, _CANVAS), N_GRID, 1,
                         labels=factors[:, 0].clone(), factors=factors,
                         factor_names=list(FACTOR_NAMES), factor_sizes=list(FACTOR_SIZES))

    def _uint8(self, idx):
        images = render_shapes(self.factors[idx].numpy())  # (B, 64, 64) uint8
        return torch.from_numpy(images).unsqueeze(1)  # (B, 1, 64, 64)

    def index_of(self, factor_values):
        """Factor indices (B, 5) -> data set indices (B,): the row-major grid index."""
        return _grid_index(factor_values)  # (B,)


# --------------------------------------------------------------------------------------
# dsprites: DeepMind's file, bit-packed
# --------------------------------------------------------------------------------------
DSPRITES_FILE = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
DSPRITES_URL = "https://github.com/deepmind/dsprites-dataset/raw/master/" + DSPRITES_FILE


def _read_dsprites_npz(path):
    """(packed images (N, 512) uint8, factors (N, 5) int64) from the official npz.

    The images are streamed out of the zip member in chunks and packed on the fly, so the
    3 GB uint8 array never exists in memory (``np.load`` would decompress it whole).
    """
    try:
        with zipfile.ZipFile(path) as zf:
            members = set(zf.namelist())
            if not {"imgs.npy", "latents_classes.npy"} <= members:
                raise ValueError("it lacks the arrays 'imgs' and 'latents_classes'")
            with zf.open("latents_classes.npy") as fh:
                classes = np.lib.format.read_array(fh, allow_pickle=False)  # (N, 6)
            with zf.open("imgs.npy") as fh:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
                if (len(shape) != 3 or shape[1:] != (64, 64) or dtype != np.uint8
                        or fortran or shape[0] < 1):
                    raise ValueError(f"'imgs' is {dtype} {shape}, expected uint8 (N, 64, 64)")
                n = shape[0]
                if classes.shape != (n, 6) or not np.issubdtype(classes.dtype, np.integer):
                    raise ValueError(f"'latents_classes' is {classes.dtype} {classes.shape}, "
                                     f"expected integers ({n}, 6)")
                packed = np.empty((n, 64 * 64 // 8), np.uint8)  # (N, 512): 8 pixels a byte
                step = 4096  # images per chunk: 16 MB of uint8 at a time
                for i in range(0, n, step):
                    m = min(step, n - i)
                    buf = fh.read(m * 64 * 64)
                    if len(buf) != m * 64 * 64:
                        raise ValueError("'imgs' is truncated")
                    chunk = np.frombuffer(buf, np.uint8).reshape(m, 64 * 64)  # (m, 4096)
                    if chunk.max() > 1:
                        raise ValueError("'imgs' holds values other than 0 and 1")
                    packed[i:i + m] = np.packbits(chunk, axis=1)  # (m, 512)
    except (zipfile.BadZipFile, zlib.error, EOFError, KeyError, ValueError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path} is not a valid dSprites npz ({e}); delete it and download "
                         f"it again from {DSPRITES_URL}.") from None
    factors = classes[:, 1:].astype(np.int64)  # (N, 5): drop the constant colour column
    # Consistency: one colour, every factor in range, no grid cell twice.
    bad = None
    if (classes[:, 0] != 0).any():
        bad = "the colour column is not constant 0"
    elif ((factors < 0) | (factors >= np.asarray(FACTOR_SIZES))).any():
        bad = f"factor classes outside the dSprites grid sizes {FACTOR_SIZES}"
    elif len(np.unique(factors @ _STRIDES.numpy())) != len(factors):
        bad = "some factor combination appears twice"
    if bad:
        raise ValueError(f"{path} is not a valid dSprites npz ({bad}); delete it and download "
                         f"it again from {DSPRITES_URL}.")
    return packed, torch.from_numpy(factors)


class _DSpritesDataset(Dataset):
    """Official dSprites (or any subset of its grid in the same format), bit-packed."""

    def __init__(self, split, path):
        self._packed, factors = _read_dsprites_npz(path)  # (N, 512) uint8, (N, 5) int64
        super().__init__("dsprites", split, (1, 64, 64), len(factors), 1,
                         labels=factors[:, 0].clone(), factors=factors,
                         factor_names=list(FACTOR_NAMES), factor_sizes=list(FACTOR_SIZES))
        # grid index -> row of the file (-1: absent); the official file is the identity,
        # a smaller file (tests) is any subset of the grid in any order.
        self._row_of = torch.full((N_GRID,), -1, dtype=torch.long)  # (N_GRID,)
        self._row_of[(factors * _STRIDES).sum(1)] = torch.arange(len(factors))

    def _uint8(self, idx):
        bits = np.unpackbits(self._packed[idx.numpy()], axis=1)  # (B, 4096)
        return torch.from_numpy(bits).reshape(len(idx), 1, 64, 64)  # (B, 1, 64, 64)

    def index_of(self, factor_values):
        """Factor indices (B, 5) -> rows of the file (B,)."""
        rows = self._row_of[_grid_index(factor_values)]  # (B,)
        if (rows < 0).any():
            raise ValueError("some requested factor combinations are not in this dSprites file.")
        return rows


def _find_dsprites(data_dir, download):
    candidates = [os.path.join(data_dir, "dsprites", DSPRITES_FILE),
                  os.path.join(data_dir, DSPRITES_FILE)]
    for path in candidates:
        if os.path.isfile(path):
            return path
    reason = "download=False"
    if download:
        target = candidates[0]
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            # Download next to the target and rename, so a broken transfer never leaves
            # a truncated file under the final name.
            urllib.request.urlretrieve(DSPRITES_URL, target + ".part")
            os.replace(target + ".part", target)
            return target
        except Exception as e:  # no network, HTTP error, disk: all mean "no file"
            reason = f"the download from {DSPRITES_URL} failed ({_first_line(e)})"
            if os.path.exists(target + ".part"):
                os.remove(target + ".part")
    raise FileNotFoundError(
        f"dSprites file not found ({reason}): searched {' and '.join(candidates)}; download "
        f"{DSPRITES_URL} into {os.path.join(data_dir, 'dsprites')}, or use the offline "
        f"procedural copy with --dataset shapes.")


def _first_line(e):
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:120]}" if text else type(e).__name__


# --------------------------------------------------------------------------------------
# mnist, fashion-mnist: IDX files
# --------------------------------------------------------------------------------------
_IDX_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_IDX_PREFIX = {"train": "train", "test": "t10k"}


def read_idx(path, ndim):
    """Read an IDX file (plain or .gz) of unsigned bytes with ``ndim`` dimensions -> numpy uint8.

    Format (LeCun's): 2 zero bytes, type byte 0x08 (unsigned byte), byte ndim, then ndim
    big-endian uint32 sizes, then the data, row-major.  Anything else -> ValueError.
    """
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            with open(path, "rb") as fh:
                raw = fh.read()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path} is corrupt ({_first_line(e)}); delete it and download it "
                         f"again.") from None
    header = 4 + 4 * ndim
    expected_magic = 0x0800 + ndim
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if magic != expected_magic:
        found = "missing: file under 4 bytes" if magic is None else f"0x{magic:08x}"
        raise ValueError(f"{path} is not an IDX file of {ndim}-D unsigned bytes (magic number "
                         f"{found}, expected 0x{expected_magic:08x}); delete it and download "
                         f"it again.")
    if len(raw) < header:
        raise ValueError(f"{path} is truncated inside its IDX header; delete it and download "
                         f"it again.")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    if len(raw) - header != int(np.prod(dims)):
        raise ValueError(f"{path} holds {len(raw) - header} data bytes but its header "
                         f"announces {dims} = {int(np.prod(dims))}; delete it and download "
                         f"it again.")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)  # read-only view


def _to_8bit(img, channels):
    """A PIL image as 8-bit 'L' or 'RGB'. 16-bit (and 32-bit integer) grey images are scaled
    v -> v / 65535 first: PIL's convert("L") would clip every value above 255 to white."""
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(img, dtype=np.float64)  # (h, w) in 0..65535
        img = Image.fromarray(np.clip(np.round(a * (255.0 / 65535.0)), 0, 255).astype(np.uint8))
    return img.convert("L" if channels == 1 else "RGB")


@functools.lru_cache(maxsize=4)
def _pil_bilinear_weights(in_size, out_size):
    """PIL's fixed-point bilinear resampling matrix (out, in), as integers scaled 2^22.

    PIL (Resample.c) centres output pixel i at (i + 0.5) * in/out in input coordinates,
    weighs input pixels by the triangle filter (support 1 when upsampling; widened by
    in/out when downsampling, which is PIL's antialiasing), normalises each row, and
    rounds the weights to 22-bit fixed point.  Reproducing this, not merely "bilinear",
    makes our pixels equal torchvision's ``Resize`` on a PIL image bit for bit.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = filterscale  # the bilinear (triangle) filter has support 1
    weights = np.zeros((out_size, in_size))  # (out, in)
    for i in range(out_size):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        j = np.arange(lo, hi)
        w = np.clip(1.0 - np.abs((j - center + 0.5) / filterscale), 0.0, None)
        weights[i, lo:hi] = w / w.sum()
    return np.trunc(weights * (1 << 22) + 0.5)  # weights are >= 0: round half up


def _pil_resample(x, weights):
    """One PIL pass along the last axis: uint8-valued (..., in) -> (..., out), rounded and
    clipped to uint8 as PIL does after EACH pass.  Exact in float64: the integer products
    and sums stay below 2^31, far below 2^53."""
    acc = x @ weights.T + (1 << 21)  # (..., out): + 1/2 in 22-bit fixed point
    return np.clip(np.floor(acc / (1 << 22)), 0, 255)


def resize_like_torchvision(images, size=32):
    """uint8 (N, h, w) -> uint8 (N, size, size), equal to ``Resize(size)`` on PIL 'L' images.

    PIL resizes horizontally first, rounds to uint8, then vertically (square inputs only).
    """
    n, h, w = images.shape
    if h != w:
        raise ValueError(f"resize_like_torchvision expects square images, got {h} x {w}.")
    weights = _pil_bilinear_weights(w, size)  # (size, w)
    out = np.empty((n, size, size), np.uint8)  # (N, size, size)
    for i in range(0, n, 8192):  # chunks keep the float64 temporaries near 60 MB
        x = images[i:i + 8192].astype(np.float64)  # (n', h, w)
        x = _pil_resample(x, weights)  # (n', h, size): horizontal pass
        x = _pil_resample(x.swapaxes(1, 2), weights)  # (n', x, y): the vertical pass
        out[i:i + 8192] = x.swapaxes(1, 2)  # back to (n', y, x)
    return out


def _idx_paths(name, split, data_dir):
    """[(images candidates), (labels candidates)], plain file first (torchvision keeps both)."""
    folder = os.path.join(data_dir, _IDX_FOLDERS[name], "raw")
    prefix = _IDX_PREFIX[split]
    return [[os.path.join(folder, f"{prefix}-{kind}-ubyte{ext}") for ext in ("", ".gz")]
            for kind in ("images-idx3", "labels-idx1")]


def _find_idx(name, split, data_dir, download):
    def present():
        found = [next((p for p in cands if os.path.isfile(p)), None) for cands in paths]
        return found if None not in found else None

    paths = _idx_paths(name, split, data_dir)
    found = present()
    reason = "download=False"
    if found is None and download:
        try:
            import torchvision  # only here: importing it costs ~1 s

            datasets = torchvision.datasets
            downloader = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
            downloader(root=data_dir, train=split == "train", download=True)
            found = present()
            reason = "the torchvision download left no files there"
        except Exception as e:  # no network, HTTP error, MD5 mismatch: all mean "no file"
            reason = f"the torchvision download failed ({_first_line(e)})"
    if found is None:
        searched = ", ".join(p[0] + "[.gz]" for p in paths)
        other = "test" if split == "train" else "train"
        has_other = all(any(os.path.isfile(p) for p in cands) for cands in _idx_paths(name, other, data_dir))
        flag = "--train-split test" if split == "train" else "--eval-split train"  # what the scripts then load
        fix = f"; {data_dir} holds the {other} split: use it with {flag}" if has_other else ""
        raise FileNotFoundError(
            f"{name} {split} split not found ({reason}): searched {searched}{fix}; or let the script "
            f"download it on a machine with internet (without --no-download), or point --data-dir at a "
            f"folder holding {_IDX_FOLDERS[name]}/raw/ in torchvision's layout.")
    return found


def _load_idx_dataset(name, split, data_dir, download):
    image_path, label_path = _find_idx(name, split, data_dir, download)
    images = read_idx(image_path, 3)  # (N, 28, 28)
    labels = read_idx(label_path, 1)  # (N,)
    if len(images) == 0:
        raise ValueError(f"{image_path} holds no images (its IDX header says 0); delete it and "
                         f"download it again.")
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{image_path} holds {images.shape[1]} x {images.shape[2]} images, "
                         f"expected 28 x 28; delete it and download it again.")
    if len(labels) != len(images):
        raise ValueError(f"{label_path} has {len(labels)} labels for {len(images)} images in "
                         f"{image_path}; delete both and download them again.")
    if len(labels) and labels.max() > 9:
        raise ValueError(f"{label_path} holds a label {labels.max()} outside 0-9; delete it "
                         f"and download it again.")
    images = torch.from_numpy(resize_like_torchvision(images, 32)).unsqueeze(1)  # (N, 1, 32, 32)
    labels = torch.from_numpy(labels.astype(np.int64))  # (N,)
    return _TensorDataset(name, split, images, labels)


# --------------------------------------------------------------------------------------
# images: a folder of pictures
# --------------------------------------------------------------------------------------
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def _load_image_folder(split, data_dir, channels):
    from PIL import Image
    from torchvision.transforms import functional as TF

    files = []
    if os.path.isdir(data_dir):
        for root, dirs, names in os.walk(data_dir):
            dirs.sort()  # a deterministic order: index i is the same image on every machine
            files += [os.path.join(root, f) for f in sorted(names)
                      if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not files:
        raise FileNotFoundError(
            f"no .png/.jpg/.jpeg images found under {os.path.abspath(data_dir)}; point "
            f"data_dir (--data-dir) at a folder of images (searched recursively), e.g. the "
            f"unpacked CelebA or Chairs images.")
    images = np.empty((len(files), channels, 64, 64), np.uint8)  # (N, C, 64, 64)
    for i, path in enumerate(files):
        try:
            with warnings.catch_warnings():
                # PIL warns above MAX_IMAGE_PIXELS and raises above twice that: a folder of
                # images for 64x64 training has no business holding either, so both are refused.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as img:
                    img = _to_8bit(img, channels)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ValueError(f"{path} is too large to be a training image ({_first_line(e)}); "
                             f"remove it from the folder or resize it.") from None
        except OSError as e:
            raise ValueError(f"{path} is not a readable image ({_first_line(e)}); remove it "
                             f"from the folder.") from None
        img = TF.center_crop(TF.resize(img, 64), 64)  # shorter side 64 (PIL bilinear), crop
        a = np.asarray(img, np.uint8).reshape(64, 64, channels)  # (64, 64, C)
        images[i] = a.transpose(2, 0, 1)  # (C, 64, 64)
    return _TensorDataset("images", split, torch.from_numpy(images))


# --------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------
def load_dataset(name, split="train", data_dir="data", download=True, channels=1):
    """Load data set ``name`` (one of ``DATASETS``) as an in-memory :class:`Dataset`.

    ``split``: "train" or "test" (ignored by shapes, dsprites and images: one set each).
    ``data_dir``: root of the torchvision layout (mnist, fashion-mnist), the folder that
    holds ``dsprites/`` (dsprites), or the image folder itself (images).
    ``download``: fetch missing files (torchvision for MNIST/Fashion-MNIST, urllib for
    dSprites); False never touches the network.
    ``channels``: 1 or 3, for ``images`` only (the others are grey or binary).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}.")
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}.")
    if channels != 1 and name != "images":
        raise ValueError(f"data set {name!r} has 1 channel; channels=3 is for 'images' only.")
    data_dir = os.fspath(data_dir)
    if name in _IDX_FOLDERS:
        return _load_idx_dataset(name, split, data_dir, download)
    if name == "shapes":
        return _ShapesDataset(split)
    if name == "dsprites":
        return _DSpritesDataset(split, _find_dsprites(data_dir, download))
    return _load_image_folder(split, data_dir, channels)


# How each --dataset of the three scripts maps onto load_dataset, and its default splits:
# MNIST-like sets train on "train" and report on "test"; factor grids and image folders
# are one set. Each script offers the subset its paper uses (`sources`).
SOURCES = {
    "mnist": dict(name="mnist", channels=1, train_split="train", eval_split="test"),
    "fashion-mnist": dict(name="fashion-mnist", channels=1, train_split="train", eval_split="test"),
    "dsprites": dict(name="dsprites", channels=1, train_split="train", eval_split="train"),
    "shapes": dict(name="shapes", channels=1, train_split="train", eval_split="train"),
    "faces": dict(name="images", channels=1, train_split="train", eval_split="train"),
    "chairs": dict(name="images", channels=1, train_split="train", eval_split="train"),
    "celeba": dict(name="images", channels=3, train_split="train", eval_split="train"),
}


def sources(*names):
    """The SOURCES entries of the --dataset values a script offers."""
    return {name: SOURCES[name] for name in names}


# (C, H, W) of each data set as load_dataset returns it (the table in this module's docstring);
# images: (channels, 64, 64).
IMAGE_SIZES = {"mnist": (1, 32, 32), "fashion-mnist": (1, 32, 32), "shapes": (1, 64, 64), "dsprites": (1, 64, 64),
               "images": (None, 64, 64)}


def image_size_for(cfg):
    """(C, H, W) of the data set of a script's config, without reading it: what a model's
    shape needs (released weights load, and draw samples, before any data is there)."""
    source = SOURCES[cfg["dataset"]]
    _, h, w = IMAGE_SIZES[source["name"]]
    return (source["channels"], h, w)


def load_for(cfg, split):
    """The data set of a script's config (cfg["dataset"], "data_dir", "download") and split."""
    source = SOURCES[cfg["dataset"]]
    return load_dataset(source["name"], split=split, data_dir=cfg["data_dir"], download=cfg["download"],
                        channels=source["channels"])


def _epoch_generator(seed, epoch):
    """A torch.Generator seeded from (seed, epoch) alone.

    SeedSequence mixes the pair into 64 well-spread bits, so neighbouring seeds or epochs
    do not give related permutations (``seed + epoch`` would make seed 0 epoch 1 equal to
    seed 1 epoch 0).
    """
    state = np.random.SeedSequence([seed, epoch]).generate_state(2, np.uint32)
    g = torch.Generator()
    g.manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)  # 63 bits: fits a signed int64
    return g


def batches(dataset, batch_size, seed, start_step=0):
    """Yield ``(idx (B,) int64, x (B, C, H, W) float32)`` forever, shuffled, reproducibly.

    Step s belongs to epoch e = s // (N // B); epoch e visits a fresh permutation drawn
    from a ``torch.Generator`` seeded from (seed, e) only, in chunks of B (drop_last).
    So the stream is a pure function of (seed, step): ``start_step=k`` yields exactly
    what a straight run yields from step k on -- what ``--resume`` needs.
    """
    n = len(dataset)
    if not isinstance(batch_size, (int, np.integer)) or not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be an integer in [1, {n}] (the data set size of "
                         f"{dataset.name!r}), got {batch_size!r}.")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    if not isinstance(start_step, (int, np.integer)) or start_step < 0:
        raise ValueError(f"start_step must be a non-negative integer, got {start_step!r}.")
    batch_size, seed, start_step = int(batch_size), int(seed), int(start_step)
    # Validate now, iterate lazily: a generator function would only raise on next().
    return _batch_stream(dataset, batch_size, seed, start_step)


def _batch_stream(dataset, batch_size, seed, step):
    per_epoch = len(dataset) // batch_size  # drop_last: the remainder is skipped
    epoch, pos = divmod(step, per_epoch)
    while True:
        perm = torch.randperm(len(dataset), generator=_epoch_generator(seed, epoch))  # (N,)
        for j in range(pos, per_epoch):
            idx = perm[j * batch_size:(j + 1) * batch_size]  # (B,)
            yield idx, dataset.batch(idx)
        epoch, pos = epoch + 1, 0
