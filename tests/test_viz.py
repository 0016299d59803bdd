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
