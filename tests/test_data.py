"""Tests of data.py: IDX reading, the 28 -> 32 resize, the procedural dSprites geometry,
the dSprites / image-folder loaders, the batch iterator and every user-facing error.

All offline and CPU: every file is written by the test into tmp_path."""

import gzip
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

import data


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def _idx_bytes(array, magic=None):
    """Serialise a uint8 array in LeCun's IDX format (magic 0x0800 + ndim, big-endian dims)."""
    magic = 0x0800 + array.ndim if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx_split(root, folder, prefix, images, labels, gz):
    raw = os.path.join(root, folder, "raw")
    os.makedirs(raw, exist_ok=True)
    for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
        path = os.path.join(raw, f"{prefix}-{kind}-ubyte" + (".gz" if gz else ""))
        payload = _idx_bytes(array)
        with (gzip.open(path, "wb") if gz else open(path, "wb")) as fh:
            fh.write(payload)
    return raw


def _digits(n, seed):
    """n uint8 28x28 test images: random grey levels, hard binary strokes and a gradient."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)  # (n, 28, 28)
    x[1::3] = (x[1::3] > 160) * 255  # binary, MNIST-like edges
    x[2::3] = np.add.outer(np.arange(28), np.arange(28)) * 4  # smooth gradient
    return x


def _torchvision_reference(images):
    """What the JointVAE code feeds the model: ToTensor(Resize(32)(PIL image))."""
    t = transforms.Compose([transforms.Resize(32), transforms.ToTensor()])
    return torch.stack([t(Image.fromarray(a, mode="L")) for a in images])  # (n, 1, 32, 32)


# --------------------------------------------------------------------------------------
# mnist / fashion-mnist
# --------------------------------------------------------------------------------------
def test_resize_matches_torchvision_resize_on_pil():
    images = _digits(30, seed=0)
    ours = torch.from_numpy(data.resize_like_torchvision(images, 32)).float() / 255
    ref = _torchvision_reference(images)[:, 0]
    # We reproduce PIL's fixed-point arithmetic, so every pixel is identical.
    assert torch.equal(ours, ref)
    # A resize, not a copy: interior pixels are interpolated between neighbours.
    assert not torch.equal(ours[:, :28, :28], torch.from_numpy(images).float() / 255)


def test_image_size_for_matches_the_loaded_data(tmp_path):
    """A model's shape without the data (released weights offline): the size load_for would give."""
    _write_idx_split(str(tmp_path), "MNIST", "t10k", _digits(2, seed=0), np.array([1, 2], np.uint8), False)
    for dataset, data_dir in (("mnist", str(tmp_path)), ("shapes", str(tmp_path))):
        cfg = {"dataset": dataset, "data_dir": data_dir, "download": False}
        assert data.image_size_for(cfg) == data.load_for(cfg, "test").image_size
    assert data.image_size_for({"dataset": "fashion-mnist"}) == (1, 32, 32)
    assert data.image_size_for({"dataset": "celeba"}) == (3, 64, 64)
    assert data.image_size_for({"dataset": "chairs"}) == (1, 64, 64)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_files_load_resized_with_labels(tmp_path, gz):
    images, labels = _digits(7, seed=1), np.array([3, 1, 4, 1, 5, 9, 2], np.uint8)
    raw = _write_idx_split(str(tmp_path), "MNIST", "t10k", images, labels, gz)
    suffix = ".gz" if gz else ""
    read = data.read_idx(os.path.join(raw, "t10k-images-idx3-ubyte" + suffix), 3)
    np.testing.assert_array_equal(read, images)

    d = data.load_dataset("mnist", "test", data_dir=str(tmp_path), download=False)
    assert (len(d), d.image_size, d.name, d.split) == (7, (1, 32, 32), "mnist", "test")
    assert d.labels.dtype == torch.int64 and d.labels.tolist() == labels.tolist()
    assert d.factors is None and d.factor_names is None and d.factor_sizes is None
    assert d.images.dtype == torch.uint8 and d.images.shape == (7, 1, 32, 32)  # kept small
    x = d.batch(torch.tensor([4, 0]))  # (2, 1, 32, 32)
    assert x.dtype == torch.float32
    ref = _torchvision_reference(images[[4, 0]])
    assert torch.equal(x, ref)


def test_an_idx_file_of_zero_images_is_one_sentence(tmp_path):
    _write_idx_split(str(tmp_path), "MNIST", "t10k", np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.uint8), False)
    with pytest.raises(ValueError, match="holds no images"):
        data.load_dataset("mnist", "test", data_dir=str(tmp_path), download=False)


def test_fashion_mnist_train_split_loads_while_test_split_is_missing(tmp_path):
    images, labels = _digits(4, seed=2), np.array([0, 9, 9, 0], np.uint8)
    _write_idx_split(str(tmp_path), "FashionMNIST", "train", images, labels, gz=True)
    d = data.load_dataset("fashion-mnist", "train", data_dir=str(tmp_path), download=False)
    assert len(d) == 4 and d.labels.tolist() == [0, 9, 9, 0]
    with pytest.raises(FileNotFoundError) as e:
        data.load_dataset("fashion-mnist", "test", data_dir=str(tmp_path), download=False)
    msg = str(e.value)
    assert "fashion-mnist test split not found" in msg and "download=False" in msg
    assert os.path.join(str(tmp_path), "FashionMNIST", "raw", "t10k-images-idx3-ubyte") in msg
    assert "without --no-download" in msg and "--data-dir" in msg
    assert "holds the train split: use it with --eval-split train" in msg  # the split there, and the flag


def test_split_with_labels_but_no_images_is_missing(tmp_path):
    # ../shared/data/MNIST has the train labels but not the train images: that is "missing".
    _write_idx_split(str(tmp_path), "MNIST", "t10k", _digits(2, 3), np.array([1, 2], np.uint8), True)
    raw = os.path.join(str(tmp_path), "MNIST", "raw")
    with gzip.open(os.path.join(raw, "train-labels-idx1-ubyte.gz"), "wb") as fh:
        fh.write(_idx_bytes(np.array([5], np.uint8)))
    assert len(data.load_dataset("mnist", "test", str(tmp_path), download=False)) == 2
    with pytest.raises(FileNotFoundError, match=r"mnist train split not found.*searched"):
        data.load_dataset("mnist", "train", str(tmp_path), download=False)


@pytest.mark.parametrize("case, key", [
    ("magic", "magic number 0x00000801, expected 0x00000803"),
    ("truncated", "header announces"),
    ("badgzip", "is corrupt"),
    ("count", "has 3 labels for 2 images"),
    ("size", "expected 28 x 28"),
])
def test_corrupt_idx_files_raise_value_error_naming_the_file(tmp_path, case, key):
    raw = _write_idx_split(str(tmp_path), "MNIST", "t10k", _digits(2, 4),
                           np.array([1, 2], np.uint8), gz=False)
    images_path = os.path.join(raw, "t10k-images-idx3-ubyte")
    if case == "magic":
        payload = _idx_bytes(_digits(2, 4), magic=0x0801)
    elif case == "truncated":
        payload = _idx_bytes(_digits(2, 4))[:-10]
    elif case == "badgzip":
        os.remove(images_path)
        images_path += ".gz"
        payload = b"\x1f\x8b this is not a gzip stream"
    elif case == "count":
        payload = None
        with open(os.path.join(raw, "t10k-labels-idx1-ubyte"), "wb") as fh:
            fh.write(_idx_bytes(np.array([1, 2, 3], np.uint8)))
    else:
        payload = _idx_bytes(np.zeros((2, 27, 28), np.uint8))
    if payload is not None:
        with open(images_path, "wb") as fh:
            fh.write(payload)
    with pytest.raises(ValueError) as e:
        data.load_dataset("mnist", "test", str(tmp_path), download=False)
    assert key in str(e.value)
    assert "t10k-" in str(e.value) and "and download" in str(e.value)


def test_failed_download_is_one_sentence_without_torchvision_trace(tmp_path, monkeypatch):
    import torchvision

    calls = []

    def offline(root, train, download):
        calls.append((root, train, download))
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried mirrors")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(FileNotFoundError) as e:
        data.load_dataset("mnist", "train", str(tmp_path), download=True)
    assert calls == [(str(tmp_path), True, True)]
    msg = str(e.value)
    assert "the torchvision download failed (RuntimeError: Error downloading" in msg
    assert "\n" not in msg and "searched" in msg
    assert e.value.__cause__ is None  # no chained torchvision traceback
    assert e.value.__context__ is None or e.value.__suppress_context__


def test_download_true_reads_what_the_torchvision_downloader_wrote(tmp_path, monkeypatch):
    import torchvision

    def fake_download(root, train, download):
        _write_idx_split(root, "FashionMNIST", "train" if train else "t10k", _digits(3, 5),
                         np.array([7, 8, 9], np.uint8), gz=True)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", fake_download)
    d = data.load_dataset("fashion-mnist", "test", str(tmp_path), download=True)
    assert d.labels.tolist() == [7, 8, 9]


# --------------------------------------------------------------------------------------
# shapes: procedural dSprites
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shapes():
    return data.load_dataset("shapes")


def _centroid(img):
    rows, cols = np.nonzero(img)
    return rows.mean(), cols.mean()


def test_shapes_grid_is_the_dsprites_grid(shapes):
    assert len(shapes) == 737280 and shapes.image_size == (1, 64, 64)
    assert shapes.factor_names == ["shape", "scale", "orientation", "posX", "posY"]
    assert shapes.factor_sizes == [3, 6, 40, 32, 32]
    f = shapes.factors
    assert f.dtype == torch.int64 and f.shape == (737280, 5)
    # Row-major with posY fastest: the ravelled index of row i is i, so all 737,280
    # tuples are distinct and index_of inverts factors.
    assert torch.equal(shapes.index_of(f), torch.arange(737280))
    assert len(torch.unique(f[:, 0] * 245760 + f[:, 1] * 40960 + f[:, 2] * 1024
                            + f[:, 3] * 32 + f[:, 4])) == 737280
    assert f[1].tolist() == [0, 0, 0, 0, 1] and f[32].tolist() == [0, 0, 0, 1, 0]
    assert f[-1].tolist() == [2, 5, 39, 31, 31]
    assert torch.equal(shapes.labels, f[:, 0]) and torch.bincount(shapes.labels).tolist() == [245760] * 3
    assert np.allclose(data.SHAPE_SCALES, [0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    # dSprites' orientations: linspace(0, 2 pi, 40), both endpoints included.
    assert data.SHAPE_ORIENTATIONS[0] == 0 and data.SHAPE_ORIENTATIONS[-1] == 2 * np.pi
    np.testing.assert_allclose(np.diff(data.SHAPE_ORIENTATIONS), 2 * np.pi / 39)


def test_shapes_batch_renders_the_factors_of_its_indices(shapes):
    idx = torch.tensor([0, 737279, 123456, 500000])
    x = shapes.batch(idx)  # (4, 1, 64, 64)
    assert x.shape == (4, 1, 64, 64) and x.dtype == torch.float32
    assert set(torch.unique(x).tolist()) == {0.0, 1.0}
    expected = data.render_shapes(shapes.factors[idx].numpy())
    assert np.array_equal(x[:, 0].numpy(), expected.astype(np.float32))


# The calibration targets below are the facts measured on 100 real dSprites tiles
# (../shared/README.md); the tests need none of those files.
DSPRITES_AREA = {0: 369, 1: 290, 2: 224}  # px at scale 1: square, ellipse, heart


def _areas(shape, scale):
    """Areas (80,) of one shape and scale over the 40 orientations at both sub-pixel
    phases (posX = posY = 0 is phase 0, posX = posY = 16 phase 1/2)."""
    f = np.array([[shape, scale, k, p, p] for k in range(40) for p in (0, 16)])
    return data.render_shapes(f).sum(axis=(1, 2)).astype(float)  # (80,)


def test_shapes_areas_at_scale_1_match_dsprites_within_5_percent():
    for shape, target in DSPRITES_AREA.items():
        areas = _areas(shape, 5)  # (80,)
        assert abs(areas.mean() / target - 1) < 0.05, (shape, areas.mean(), target)
        # No single orientation is far off either (rasterisation moves a few pixels).
        assert abs(areas / target - 1).max() < 0.1, (shape, areas.min(), areas.max())


def test_shapes_area_is_proportional_to_scale_squared():
    for shape, target in DSPRITES_AREA.items():
        for j, scale in enumerate(data.SHAPE_SCALES):
            mean = _areas(shape, j).mean()
            assert abs(mean / (target * scale ** 2) - 1) < 0.05, (shape, scale, mean)


def _axis_ratio(img):
    """sqrt of the ratio of the eigenvalues of the pixel covariance: a / b for an ellipse."""
    rows, cols = np.nonzero(img)
    eig = np.linalg.eigvalsh(np.cov(np.stack([cols, rows]).astype(float)))  # (2,) ascending
    return np.sqrt(eig[1] / eig[0])


def test_shapes_ellipse_axis_ratio_is_1_75():
    for j in range(6):
        imgs = data.render_shapes(np.array([[1, j, k, p, p] for k in range(40) for p in (0, 16)]))
        ratios = np.array([_axis_ratio(im) for im in imgs])  # (80,)
        assert abs(ratios.mean() - 1.75) < 0.05, (j, ratios.mean())
        if j == 5:
            # Single images: whole pixels move the second moments by up to ~0.06 at scale 1.
            assert abs(ratios - 1.75).max() < 0.08, (ratios.min(), ratios.max())


def test_shapes_centre_spans_16_to_48_px_over_posx_and_posy():
    expected = 16 + 32 * data.SHAPE_POSITIONS  # (32,) px, pixel k covering [k, k + 1)
    for shape in range(3):
        for scale, k in ((5, 7), (0, 23)):
            f = np.array([[shape, scale, k, i, 9] for i in range(32)])  # sweep posX
            cents = np.array([_centroid(im) for im in data.render_shapes(f)]) + 0.5  # (32, 2)
            # Half-pixel placement moves the centre by <= 1/4 px, rasterisation by ~0.15.
            np.testing.assert_allclose(cents[:, 1], expected, atol=0.45)
            assert (np.diff(cents[:, 1]) > 0.4).all()  # strictly to the right, every step
            np.testing.assert_allclose(cents[:, 0], cents[0, 0], atol=0.3)  # row ~ fixed
            f = np.array([[shape, scale, k, 20, i] for i in range(32)])  # sweep posY
            cents = np.array([_centroid(im) for im in data.render_shapes(f)]) + 0.5
            np.testing.assert_allclose(cents[:, 0], expected, atol=0.45)  # rows go down
            assert (np.diff(cents[:, 0]) > 0.4).all()
            np.testing.assert_allclose(cents[:, 1], cents[0, 1], atol=0.3)
    # Over all shapes, scales and orientations the end positions average 16 and 48 px.
    f = np.array([[s, j, k, 0, 31] for s in range(3) for j in range(6) for k in range(40)])
    cents = np.array([_centroid(im) for im in data.render_shapes(f)]) + 0.5  # (720, 2)
    assert abs(cents[:, 1].mean() - 16) < 0.05 and abs(cents[:, 0].mean() - 48) < 0.05
    assert abs(cents - [48, 16]).max() < 0.25


def test_shapes_area_grows_with_scale_and_nothing_is_clipped():
    for shape in range(3):
        for orientation in (0, 6, 13):
            f = np.array([[shape, s, orientation, 16, 16] for s in range(6)])
            areas = data.render_shapes(f).sum(axis=(1, 2)).astype(float)  # (6,)
            assert (np.diff(areas) > 0).all()
    bank = np.unpackbits(data._sprite_bank(), axis=-1).reshape(-1, 32, 32)  # every sprite
    # The outer ring of every sprite box is empty, so translation never clips a shape ...
    assert bank[:, [0, -1], :].sum() == 0 and bank[:, :, [0, -1]].sum() == 0
    # ... and the extreme positions (phase 0, like posX = posY = 1) keep the full sprite.
    corners = [[s, 5, o, x, y] for s in range(3) for o in (0, 5, 17) for x in (0, 31) for y in (0, 31)]
    inner = [[s, 5, o, 1, 1] for s in range(3) for o in (0, 5, 17) for _ in range(4)]
    assert np.array_equal(data.render_shapes(np.array(corners)).sum(axis=(1, 2)),
                          data.render_shapes(np.array(inner)).sum(axis=(1, 2)))


def test_shapes_occupied_pixels_stay_within_the_real_range():
    # Every sprite at the extreme positions: the bound is 16 - 13.6 .. 48 + 13.6 px (the
    # half-diagonal of the scale-1 square), whole pixels 3 .. 60.
    f = np.array([[s, j, k, p, q] for s in range(3) for j in range(6) for k in range(40)
                  for p in (0, 31) for q in (0, 31)])
    rows, cols = np.nonzero(data.render_shapes(f).any(axis=0))
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (3, 60, 3, 60)
    # The 100 real tiles occupy rows 5..57 and columns 6..57.  In 64 samples of 100 random
    # images of ours, the median of each extreme lies within a pixel of the real one.
    rng = np.random.default_rng(0)
    f = np.stack([rng.integers(0, n, 6400) for n in data.FACTOR_SIZES], axis=1)  # (6400, 5)
    imgs = data.render_shapes(f).reshape(64, 100, 64, 64)
    extremes = []
    for sample in imgs:
        rows, cols = np.nonzero(sample.any(axis=0))
        extremes.append((rows.min(), rows.max(), cols.min(), cols.max()))
    median = np.median(np.array(extremes), axis=0)  # (4,)
    assert (abs(median - [5, 57, 6, 57]) <= 1).all(), median


def test_shapes_orientation_39_renders_as_orientation_0():
    for p in (0, 16):  # both sub-pixel phases
        f = np.array([[s, j, k, p, 31 - p] for s in range(3) for j in range(6) for k in range(40)])
        imgs = data.render_shapes(f).reshape(3, 6, 40, 64, 64)
        # 2 pi is the angle 0: bit for bit the same image, for every shape and scale.
        assert np.array_equal(imgs[:, :, 39], imgs[:, :, 0])
        # The other 39 are 39 different angles: a heart never repeats, nor does a
        # square within a quarter turn (its step is 360 / 39 = 9.23 degrees).
        assert len({im.tobytes() for im in imgs[2, 5, :39]}) == 39
        assert len({im.tobytes() for im in imgs[0, 5, :10]}) == 10


def test_shapes_orientation_is_counter_clockwise_over_linspace_0_2pi():
    for k in range(40):
        theta = data.SHAPE_ORIENTATIONS[k]
        ell = data.render_shapes(np.array([[1, 5, k, 16, 16]]))[0]
        rows, cols = np.nonzero(ell)
        x, y = cols - cols.mean(), -(rows - rows.mean())  # y up
        cov = np.cov(np.stack([x, y]))
        major = 0.5 * np.arctan2(2 * cov[0, 1], cov[0, 0] - cov[1, 1])  # major-axis angle
        assert abs(np.angle(np.exp(2j * (major - theta)))) / 2 < np.deg2rad(3)
        heart = data.render_shapes(np.array([[2, 5, k, 16, 16]]))[0]
        rows, cols = np.nonzero(heart)
        x, y = cols - cols.mean(), -(rows - rows.mean())
        tip = np.argmax(x * x + y * y)  # the point of the heart: farthest from its centroid
        # The tip points down (-90 degrees) at orientation 0 and turns with theta.
        assert abs(np.angle(np.exp(1j * (np.arctan2(y[tip], x[tip]) - (theta - np.pi / 2))))) < np.deg2rad(12)


def _bbox(img):
    rows, cols = np.nonzero(img)
    return img[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def test_shapes_are_clearly_distinct():
    imgs = data.render_shapes(np.array([[s, 5, 0, 16, 16] for s in range(3)])).astype(bool)
    for a in range(3):
        for b in range(a + 1, 3):
            union = (imgs[a] | imgs[b]).sum()
            assert (imgs[a] ^ imgs[b]).sum() > 0.2 * union
    spread = []
    for img in imgs:
        rows, cols = np.nonzero(img)
        spread.append((cols.var(), rows.var()))
    assert 0.95 < spread[0][0] / spread[0][1] < 1.05  # square: as wide as high
    assert 2.8 < spread[1][0] / spread[1][1] < 3.3  # ellipse: axes 1.75 : 1, variances ~3.06
    square, ellipse, heart = (_bbox(im) for im in imgs)
    assert np.array_equal(heart, heart[:, ::-1])  # a heart is mirror-symmetric ...
    assert heart.shape != heart[::-1].shape or (heart ^ heart[::-1, :]).sum() > 0.2 * heart.sum()
    top, bottom = np.array_split(heart, 2)  # ... but not upside down: the lobes carry
    assert top.sum() > bottom.sum()  # more area than the tip


def test_render_shapes_validates_its_input():
    with pytest.raises(ValueError, match=r"shape \(B, 5\)"):
        data.render_shapes(np.zeros((2, 4), np.int64))
    with pytest.raises(ValueError, match="out of range"):
        data.render_shapes(np.array([[0, 0, 40, 0, 0]]))
    with pytest.raises(ValueError, match="integer"):
        data.render_shapes(np.zeros((1, 5), np.float32))
    assert data.render_shapes(np.zeros((0, 5), np.int64)).shape == (0, 64, 64)


# --------------------------------------------------------------------------------------
# dsprites (a tiny synthetic npz in the official format)
# --------------------------------------------------------------------------------------
def _write_dsprites(path, factors, colour=0, imgs=None):
    n = len(factors)
    imgs = data.render_shapes(factors) if imgs is None else imgs  # (n, 64, 64)
    classes = np.concatenate([np.full((n, 1), colour), factors], 1).astype(np.int64)  # (n, 6)
    values = classes.astype(np.float64)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez_compressed(path, imgs=imgs, latents_classes=classes, latents_values=values,
                        metadata=np.array({"description": "synthetic"}, dtype=object))
    return imgs


def _grid_subset(n, seed):
    rng = np.random.default_rng(seed)
    rows = rng.choice(data.N_GRID, n, replace=False)  # (n,) distinct grid cells, any order
    return data._grid_factors()[torch.from_numpy(rows)].numpy()


def test_dsprites_loader_on_a_synthetic_npz(tmp_path):
    factors = _grid_subset(40, seed=6)
    path = os.path.join(str(tmp_path), "dsprites", data.DSPRITES_FILE)
    imgs = _write_dsprites(path, factors)
    d = data.load_dataset("dsprites", "test", str(tmp_path), download=False)
    assert (len(d), d.image_size, d.name) == (40, (1, 64, 64), "dsprites")
    assert d.factors.dtype == torch.int64 and np.array_equal(d.factors.numpy(), factors)
    assert np.array_equal(d.labels.numpy(), factors[:, 0])
    assert d.factor_sizes == [3, 6, 40, 32, 32] and d.factor_names[0] == "shape"
    assert d._packed.shape == (40, 512)  # bit-packed: 8 pixels a byte
    idx = torch.tensor([39, 0, 17])
    x = d.batch(idx)  # (3, 1, 64, 64)
    assert x.dtype == torch.float32 and np.array_equal(x[:, 0].numpy(), imgs[[39, 0, 17]])
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    assert torch.equal(d.index_of(d.factors[perm]), perm)
    absent = np.setdiff1d(np.arange(data.N_GRID), (factors @ data._STRIDES.numpy()))[:1]
    with pytest.raises(ValueError, match="not in this dSprites file"):
        d.index_of(data._grid_factors()[torch.from_numpy(absent)])
    # The file may also sit directly in data_dir.
    os.replace(path, os.path.join(str(tmp_path), data.DSPRITES_FILE))
    assert len(data.load_dataset("dsprites", data_dir=str(tmp_path), download=False)) == 40


@pytest.mark.parametrize("case, key", [
    ("garbage", "not a valid dSprites npz"),
    ("colour", "colour column is not constant 0"),
    ("duplicate", "appears twice"),
    ("range", "outside the dSprites grid"),
    ("values", "values other than 0 and 1"),
])
def test_corrupt_dsprites_npz_raises_value_error(tmp_path, case, key):
    path = os.path.join(str(tmp_path), "dsprites", data.DSPRITES_FILE)
    factors = _grid_subset(6, seed=7)
    if case == "garbage":
        os.makedirs(os.path.dirname(path))
        with open(path, "wb") as fh:
            fh.write(b"PK\x03\x04 truncated zip")
    elif case == "colour":
        _write_dsprites(path, factors, colour=1)
    elif case == "duplicate":
        _write_dsprites(path, np.concatenate([factors, factors[:1]]))
    elif case == "range":
        factors[0, 2] = 40
        _write_dsprites(path, factors, imgs=np.zeros((6, 64, 64), np.uint8))
    else:
        _write_dsprites(path, factors, imgs=np.full((6, 64, 64), 255, np.uint8))
    with pytest.raises(ValueError) as e:
        data.load_dataset("dsprites", data_dir=str(tmp_path), download=False)
    assert key in str(e.value) and data.DSPRITES_FILE in str(e.value)


def test_missing_dsprites_and_failed_download(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as e:
        data.load_dataset("dsprites", data_dir=str(tmp_path), download=False)
    msg = str(e.value)
    assert "dSprites file not found (download=False)" in msg and "searched" in msg
    assert data.DSPRITES_URL in msg and "shapes" in msg

    import urllib.error

    def offline(url, filename):
        with open(filename, "wb") as fh:  # a partial transfer, then the network drops
            fh.write(b"PK")
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(data.urllib.request, "urlretrieve", offline)
    with pytest.raises(FileNotFoundError) as e:
        data.load_dataset("dsprites", data_dir=str(tmp_path), download=True)
    assert "the download from" in str(e.value) and "URLError" in str(e.value)
    assert e.value.__cause__ is None
    assert e.value.__context__ is None or e.value.__suppress_context__
    assert os.listdir(os.path.join(str(tmp_path), "dsprites")) == []  # no partial file left


# --------------------------------------------------------------------------------------
# images folder
# --------------------------------------------------------------------------------------
def test_image_folder_resize_crop_and_channels(tmp_path):
    folder = tmp_path / "faces"
    (folder / "sub").mkdir(parents=True)
    Image.new("RGB", (100, 80), (10, 200, 30)).save(folder / "a_solid.png")
    # 128 x 64 horizontal ramp: the shorter side is already 64, so the centre crop keeps
    # columns 32 ... 95 unchanged.
    ramp = np.tile(np.arange(128, dtype=np.uint8) * 2, (64, 1))  # (64, 128)
    Image.fromarray(ramp, mode="L").save(folder / "sub" / "b_ramp.png")
    (folder / "notes.txt").write_text("not an image")

    rgb = data.load_dataset("images", data_dir=str(folder), channels=3)
    assert (len(rgb), rgb.image_size, rgb.labels, rgb.factors) == (2, (3, 64, 64), None, None)
    x = rgb.batch(torch.tensor([0, 1]))  # (2, 3, 64, 64): files in sorted walk order
    np.testing.assert_allclose(x[0].mean(dim=(1, 2)).numpy(), np.array([10, 200, 30]) / 255, atol=1e-6)
    assert torch.equal(x[1, 0] * 255, torch.from_numpy(ramp[:, 32:96]).float())
    assert torch.equal(x[1, 0], x[1, 2])  # a grey image becomes equal RGB channels

    grey = data.load_dataset("images", data_dir=str(folder), channels=1)
    assert grey.image_size == (1, 64, 64)
    expected = np.asarray(Image.new("RGB", (1, 1), (10, 200, 30)).convert("L"))[0, 0]
    assert torch.all(grey.images[0] == int(expected))
    with pytest.raises(ValueError, match="no factor grid"):
        grey.index_of(torch.zeros(1, 5, dtype=torch.long))


def test_16_bit_grey_png_is_scaled_not_clipped(tmp_path):
    ramp = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)  # (64, 64) 0..65520
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    d = data.load_dataset("images", data_dir=str(tmp_path), channels=1)
    x = d.batch(torch.tensor([0]))[0, 0]  # (64, 64)
    expected = torch.from_numpy(np.round(ramp / 65535.0 * 255.0) / 255.0).float()
    assert torch.allclose(x, expected, atol=1e-6)          # v -> v / 65535, in 1/255 steps
    assert 0.45 < float(x.mean()) < 0.55                     # clipping would give ~1.0


def test_decompression_bomb_image_is_one_sentence(tmp_path, monkeypatch):
    # A 64x64 image counts as a bomb once PIL's limit is lowered below it (a real bomb
    # would cost the test gigabytes): the same PIL code path refuses both.
    Image.new("L", (64, 64), 0).save(tmp_path / "bomb.png")
    for limit in (1000, 3000):  # above 2x the limit PIL raises; between 1x and 2x it warns
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        with pytest.raises(ValueError, match="bomb.png is too large to be a training image"):
            data.load_dataset("images", data_dir=str(tmp_path), channels=1)


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no \.png/\.jpg/\.jpeg images found under .*searched recursively"):
        data.load_dataset("images", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no .png"):
        data.load_dataset("images", data_dir=str(tmp_path / "missing"))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="broken.png is not a readable image"):
        data.load_dataset("images", data_dir=str(tmp_path))


# --------------------------------------------------------------------------------------
# batches
# --------------------------------------------------------------------------------------
class _Counting(data.Dataset):
    """A 10-image data set whose image i is the constant i / 255: cheap and checkable."""

    def __init__(self, n=10):
        super().__init__("toy", "train", (1, 2, 2), n, 255)

    def _uint8(self, idx):
        return idx.to(torch.uint8)[:, None, None, None].expand(-1, 1, 2, 2)


def _take(it, k):
    return [next(it) for _ in range(k)]


def test_batches_deterministic_permutations_and_drop_last():
    d = _Counting(10)
    a = _take(data.batches(d, 3, seed=5), 9)  # 3 steps per epoch (10 // 3), 3 epochs
    torch.manual_seed(123)  # the global RNG must not matter
    b = _take(data.batches(d, 3, seed=5), 9)
    assert all(torch.equal(i, j) and torch.equal(x, y) for (i, x), (j, y) in zip(a, b))
    for idx, x in a:
        assert idx.dtype == torch.int64 and idx.shape == (3,) and x.shape == (3, 1, 2, 2)
        assert torch.equal(x[:, 0, 0, 0] * 255, idx.float())  # x is dataset.batch(idx)
    epochs = [torch.cat([a[e * 3 + s][0] for s in range(3)]) for e in range(3)]
    for e in epochs:  # within an epoch no index repeats; one index is dropped (drop_last)
        assert len(torch.unique(e)) == 9
    assert not all(torch.equal(epochs[0], e) for e in epochs[1:])  # fresh permutations
    c = _take(data.batches(d, 3, seed=6), 3)
    assert not all(torch.equal(i, j) for (i, _), (j, _) in zip(a, c))


@pytest.mark.parametrize("k", [0, 1, 3, 7, 8])
def test_batches_resume_equals_straight_run(k):
    d = _Counting(10)
    straight = _take(data.batches(d, 4, seed=11), 12)  # 2 steps per epoch
    resumed = _take(data.batches(d, 4, seed=11, start_step=k), 12 - k)
    assert all(torch.equal(i, j) for (i, _), (j, _) in zip(straight[k:], resumed))


def test_batches_errors_are_raised_at_call_time():
    d = _Counting(10)
    with pytest.raises(ValueError, match=r"batch_size must be an integer in \[1, 10\].*got 11"):
        data.batches(d, 11, seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        data.batches(d, 0, seed=0)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        data.batches(d, 2, seed=-1)
    with pytest.raises(ValueError, match="start_step"):
        data.batches(d, 2, seed=0, start_step=-3)


# --------------------------------------------------------------------------------------
# load_dataset argument errors
# --------------------------------------------------------------------------------------
def test_load_dataset_argument_errors(tmp_path):
    with pytest.raises(ValueError) as e:
        data.load_dataset("cifar10")
    assert "unknown data set 'cifar10'" in str(e.value)
    assert "mnist, fashion-mnist, shapes, dsprites, images" in str(e.value)
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'valid'"):
        data.load_dataset("shapes", split="valid")
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        data.load_dataset("images", data_dir=str(tmp_path), channels=2)
    with pytest.raises(ValueError, match="channels=3 is for 'images' only"):
        data.load_dataset("mnist", data_dir=str(tmp_path), channels=3)
    with pytest.raises(FileNotFoundError, match="mnist test split not found.*--no-download"):
        data.load_dataset("mnist", "test", data_dir=str(tmp_path), download=False)
