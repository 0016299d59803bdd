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
