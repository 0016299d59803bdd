"""viz.py: figures are written headless, with the layout the method files rely on."""

import numpy as np
import pytest
import torch

import viz


def test_tile_layout_and_values():
    imgs = torch.zeros(5, 1, 4, 4)
    imgs[3] = 1.0                                   # the 4th image white
    canvas = viz.tile(imgs, nrow=3, pad=1, pad_value=0.5)
    assert canvas.shape == (2 * 5 + 1, 3 * 5 + 1, 1)
    assert np.all(canvas[6:10, 1:5, 0] == 1.0)     # row 1, column 0
    assert np.all(canvas[1:5, 1:5, 0] == 0.0) and canvas[0, 0, 0] == 0.5


def test_pngs_are_written(tmp_path):
    imgs = torch.rand(6, 3, 8, 8)
    assert (tmp_path / "g.png").exists() is False
    viz.save_image_grid(imgs, str(tmp_path / "g.png"), nrow=3, row_labels=["a", "b"], title="t")
    decode = lambda z: torch.sigmoid(z.sum(1, keepdim=True)).reshape(-1, 1, 1, 1).expand(-1, 1, 8, 8)  # noqa: E731
    viz.save_traversal(decode, torch.randn(2, 4, 3), str(tmp_path / "t.png"), row_labels=["z0", "z1"])
    rows = {f"z{i}": np.arange(5) * i for i in range(12)}
    viz.plot_curves(rows, str(tmp_path / "c.png"), x=np.arange(5), hlines={"log 10": np.log(10)})
    viz.save_matrix(np.arange(6).reshape(2, 3), str(tmp_path / "m.png"))
    viz.save_scatter_lines(np.arange(4), [np.arange(4), -np.arange(4)], str(tmp_path / "s.png"), labels=["a", "b"])
    for name in ("g", "t", "c", "m", "s"):
        data = (tmp_path / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000, name


def _png(path):
    import matplotlib.image as mpimg
    a = mpimg.imread(str(path))  # (H, W, 4) floats in [0, 1]
    return a[..., :3].mean(axis=2)  # (H, W) grey


def test_image_grid_draws_the_images_where_they_belong(tmp_path):
    # Six 8x8 tiles, 3 per row, all white except tile 4 (row 1, column 1), which is black.
    imgs = torch.ones(6, 1, 8, 8)
    imgs[4] = 0.0
    viz.save_image_grid(imgs, str(tmp_path / "g.png"), nrow=3)
    g = _png(tmp_path / "g.png")
    dark = np.argwhere(g < 0.2)                                 # the black tile
    assert len(dark) > 0
    (r0, c0), (r1, c1) = dark.min(axis=0), dark.max(axis=0)
    assert (r1 - r0 + 1) / (c1 - c0 + 1) == pytest.approx(1.0, abs=0.15)  # square
    assert len(dark) == pytest.approx((r1 - r0 + 1) * (c1 - c0 + 1), rel=0.05)  # filled
    # Row 1, column 1: one tile's height of (white) tiles above it, one tile's width on each side.
    h_tile = r1 - r0 + 1
    assert r0 > h_tile * 0.9
    assert c0 > h_tile * 0.9 and (g.shape[1] - c1) > h_tile * 0.9


def test_read_log_roundtrip(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("step,loss\n10,1.5\n20,\n")
    log = viz.read_log(str(path))
    assert log["step"].tolist() == [10.0, 20.0] and log["loss"][0] == 1.5 and np.isnan(log["loss"][1])


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        viz.tile(torch.zeros(3, 4, 4), nrow=2)
    with pytest.raises(ValueError, match="rows, columns, latent"):
        viz.save_traversal(lambda z: z, torch.zeros(3, 4), "x.png")


def test_line_grid(tmp_path):
    x = np.arange(5)
    panels = [[[(x, x), (x, -x)], [(x, x ** 2), (x, x)]], [[(x, 0 * x), (x, x)], [(x, x), (x, x)]]]
    viz.save_line_grid(panels, str(tmp_path / "l.png"), row_labels=["scale", "posX"], col_labels=["z0", "z1"],
                       series_labels=["square", "ellipse"], title="t")
    assert (tmp_path / "l.png").read_bytes()[:4] == b"\x89PNG"


# --------------------------------------------------------------------------- figures that explain themselves


def _figure_texts(monkeypatch):
    """Record, per saved file name, the texts of each figure as it is saved."""
    from matplotlib.figure import Figure
    from matplotlib.text import Text

    seen, real = {}, Figure.savefig

    def recording(fig, path, *a, **k):
        ax = fig.axes[0]
        legend = ax.get_legend()
        seen[str(path).rsplit("/", 1)[-1]] = dict(
            title=ax.get_title(), yticks=[t.get_text() for t in ax.get_yticklabels()],
            ax_texts=[(t.get_text(), t.get_fontsize()) for t in ax.texts],
            legend=[t.get_text() for t in legend.get_texts()] if legend else [],
            sizes=[t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()])
        return real(fig, path, *a, **k)

    monkeypatch.setattr(Figure, "savefig", recording)
    return seen


def _codes_and_labels():
    # 3 classes, 5 codes: code 2 holds class 0, code 0 class 1, code 1 class 2; code 4 a few
    # images of class 0 (unmatched), code 3 none.
    pred = [2] * 8 + [0] * 6 + [1] * 5 + [4] * 2 + [1]
    labels = [0] * 8 + [1] * 6 + [2] * 5 + [0] * 2 + [0]
    return torch.tensor(pred), torch.tensor(labels)


def test_code_order_puts_the_code_matched_to_class_k_in_row_k():
    pred, labels = _codes_and_labels()
    order, row_labels, m = viz.code_order(pred, labels, 5, ("0", "1", "2"))
    assert order == [2, 0, 1, 4, 3]
    assert row_labels == ["c=2 (digit 0)", "c=0 (digit 1)", "c=1 (digit 2)", "c=4 (unmatched)", "c=3 (unused)"]
    assert m.tolist() == [[8, 0, 0], [0, 6, 0], [1, 0, 5], [2, 0, 0], [0, 0, 0]]
    order, row_labels, _ = viz.code_order(pred, labels, 5, ("cat", "dog", "owl"), prefix="d")
    assert row_labels[:3] == ["d=2 (cat)", "d=0 (dog)", "d=1 (owl)"]
    assert viz.code_order(pred, None, 5)[:2] == ([0, 1, 2, 3, 4], ["c=0", "c=1", "c=2", "c=3", "c=4"])
    conf, names = viz.hungarian_confusion(pred, labels, 5, 3)
    assert names == ["c2", "c0", "c1", "c4", "c3"] and conf[:, 0].tolist() == [8, 0, 1, 2, 0]


def test_confusion_figure_rows_accuracy_and_legible_cells(tmp_path, monkeypatch):
    seen = _figure_texts(monkeypatch)
    pred, labels = _codes_and_labels()
    path, order, row_labels = viz.save_confusion(pred, labels, 5, ("0", "1", "2"), str(tmp_path / "confusion.png"),
                                                 "code", "code vs class",
                                                 accuracy={"Hungarian": 19 / 22, "majority": 21 / 22})
    assert (order, row_labels) == viz.code_order(pred, labels, 5, ("0", "1", "2"))[:2]
    fig = seen["confusion.png"]
    assert fig["yticks"] == row_labels
    assert "Hungarian 86.4 %" in fig["title"] and "majority 95.5 %" in fig["title"] and "22 images" in fig["title"]
    cells = [t for t, _ in fig["ax_texts"]]
    # Percent of the row: c=1 holds 1 image of class 0 and 5 of class 2; empty cells blank.
    assert cells == ["100", "", "", "", "100", "", "17", "", "83", "100", "", "", "", "", ""]
    assert min(s for _, s in fig["ax_texts"]) >= 8 and min(fig["sizes"]) >= 8
    assert (tmp_path / "confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_confusion_title_without_accuracy():
    assert viz.confusion_title("t", None, 5) == "t"
    assert viz.confusion_title("t", {"Hungarian": 0.5}, 10) == "t\naccuracy Hungarian 50.0 %, 10 images"


def test_informative_units_skip_inactive_but_keep_one():
    kl = [0.005, 2.4, 0.05, 0.3, 0.1]
    assert viz.informative_units(kl, 0.1) == ([1, 3], 3)        # 0.1 itself is inactive
    assert viz.informative_units(kl, 0.1, max_units=1) == ([1], 3)
    assert viz.informative_units([0.01, 0.03, 0.02], 0.1) == ([1], 2)  # none active: the top one
    assert viz.inactive_note(3, 0.1) == "3 inactive units (KL <= 0.1 nats) not shown"
    assert viz.inactive_note(1, 0.1) == "1 inactive unit (KL <= 0.1 nats) not shown"
    assert viz.inactive_note(0, 0.1) == ""


def test_unit_traversals_rows_and_labels():
    values = torch.tensor([-1.0, 0.0, 2.0])
    kl = [0.005, 2.4, 0.05, 0.3]
    rows, labels = viz.unit_traversals(values, kl, base=torch.tensor([0.0, 1.0]), units=[1, 3])
    assert rows.shape == (2, 3, 6) and labels == ["z1  KL 2.40", "z3  KL 0.30"]
    assert rows[0, :, 1].tolist() == [-1.0, 0.0, 2.0] and rows[1, :, 3].tolist() == [-1.0, 0.0, 2.0]
    assert rows[0, :, [0, 2, 3]].abs().sum() == 0 and rows[:, :, 4:].tolist() == [[[0.0, 1.0]] * 3] * 2
    rows, labels = viz.unit_traversals(values, kl)              # all units, ranked by KL
    assert [t.split()[0] for t in labels] == ["z1", "z3", "z2", "z0"]
    assert viz.value_labels(values) == ["-1.00", "0.00", "2.00"]


def test_traversal_gif_frames_go_forth_and_back(tmp_path):
    from PIL import Image, ImageSequence

    values = torch.linspace(-2.0, 2.0, 6)                                   # 6 values -> 10 frames
    latents = torch.zeros(3, 6, 3)
    for u in range(3):
        latents[u, :, u] = values
    decode = lambda z: torch.sigmoid(z.sum(1)).reshape(-1, 1, 1, 1).expand(-1, 1, 8, 8)  # noqa: E731
    path = str(tmp_path / "t.gif")
    viz.save_traversal_gif(decode, latents, path, values, ["z0  KL 2.41", "z1  KL 1.00", "z2  KL 0.20"], tile=32,
                           frame_ms=100)
    im = Image.open(path)
    assert im.format == "GIF" and im.n_frames == 10 and im.info["loop"] == 0 and im.info["duration"] == 100
    # 3 tiles side by side: each at least its 32-pixel tile wide, a header and a label strip.
    assert im.size[0] >= 3 * 32 and im.size[1] == 20 + 32 + 15 + 2
    assert (tmp_path / "t.gif").stat().st_size < 1_000_000
    # The first tile's brightness follows the value: up over the 6 values, then back down.
    frames = [np.asarray(f.convert("L"), dtype=float) for f in ImageSequence.Iterator(im)]
    y_mid = 20 + 16                                                         # below the 20-pixel header
    x_mid = int(np.flatnonzero(frames[0][y_mid] < 255)[0]) + 16             # tile 0: the first non-white pixels
    level = [f[20 + 16, x_mid] for f in frames]
    expected = torch.sigmoid(values[[0, 1, 2, 3, 4, 5, 4, 3, 2, 1]]).numpy() * 255
    assert np.allclose(level, expected, atol=2.0)
    with pytest.raises(ValueError, match="values"):
        viz.save_traversal_gif(decode, latents, path, values[:4])


def test_traversal_gif_grid_of_ten_rgb_units_stays_small(tmp_path):
    from PIL import Image

    values = torch.linspace(-2.0, 2.0, 11)                                  # 11 values -> 20 frames
    latents = torch.zeros(10, 11, 10)
    for u in range(10):
        latents[u, :, u] = values
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")

    def decode(z):  # (B, 10) -> smooth RGB images (B, 3, 32, 32)
        a = torch.sigmoid(z[:, :3])[:, :, None, None]
        return (a * xx + (1 - a) * yy).clamp(0, 1)

    path = str(tmp_path / "t.gif")
    viz.save_traversal_gif(decode, latents, path, values, [f"z{u}  KL 1.00" for u in range(10)])
    im = Image.open(path)
    assert im.n_frames == 20 and im.size[1] == 20 + 2 * (64 + 15 + 2)    # 5 units per grid row, 64-pixel tiles
    assert 5 * 64 <= im.size[0] <= 5 * 80 and (tmp_path / "t.gif").stat().st_size < 1_000_000
    viz.save_traversal_gif(decode, latents[:1], path, values, ["z0  KL 1.00"])
    assert Image.open(path).size == (150, 20 + 64 + 15 + 2)              # one unit: wide enough for the value


def test_reference_lines_are_named_in_the_legend(tmp_path, monkeypatch):
    seen = _figure_texts(monkeypatch)
    rows = {f"z{i}": np.arange(5) * i for i in range(8)}
    viz.plot_curves(rows, str(tmp_path / "c.png"), x=np.arange(5), hlines={"C_c clip 2.30": 2.3})
    viz.plot_curves({"a": np.arange(3)}, str(tmp_path / "d.png"), hlines={"log 10": np.log(10)})
    assert seen["c.png"]["legend"][-1] == "C_c clip 2.30" and seen["c.png"]["ax_texts"] == []
    assert seen["d.png"]["legend"] == ["a", "log 10"] and seen["d.png"]["ax_texts"] == []
    assert min(seen["c.png"]["sizes"]) >= 8
