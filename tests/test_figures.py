"""Every figure the three scripts write keeps its text inside the canvas (no clipped
title, label or tick label), on a smoke run of each on generated data."""

import os

import matplotlib
import pytest

matplotlib.use("Agg", force=True)
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.text import Text  # noqa: E402

import btcvae  # noqa: E402
import cascadevae  # noqa: E402
import jointvae  # noqa: E402

BASE = ["--dataset", "shapes", "--batch-size", "16", "--log-every", "5", "--eval-samples", "300",
        "--metric-votes", "10", "--eval-batch-size", "256", "--no-progress", "--device", "cpu", "--iterations", "10"]


@pytest.mark.parametrize("mod, extra", [(jointvae, []), (btcvae, ["--decomp-samples", "50"]),
                                        (cascadevae, ["--r", "4", "--t-d", "5"])],
                         ids=["jointvae", "btcvae", "cascadevae"])
def test_no_text_is_clipped(mod, extra, tmp_path, monkeypatch):
    clipped, saved = [], []
    real_savefig = Figure.savefig

    def checking_savefig(fig, path, *a, **k):
        # The tight box holds every artist matplotlib draws (titles, labels, drawn tick
        # labels, text); it must fit in the canvas.
        renderer = fig.canvas.get_renderer()
        tight = fig.get_tightbbox(renderer)                                  # inches
        w, h = fig.get_size_inches()
        tol = 0.03                                                          # inches
        if tight.x0 < -tol or tight.y0 < -tol or tight.x1 > w + tol or tight.y1 > h + tol:
            texts = [t.get_text()[:50] for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
            clipped.append(f"{os.path.basename(str(path))}: drawn area x {tight.x0:.2f}..{tight.x1:.2f}, y {tight.y0:.2f}..{tight.y1:.2f} exceeds {w:.2f} x {h:.2f} in; "
                           f"texts {texts[:4]}")
        saved.append(os.path.basename(str(path)))
        return real_savefig(fig, path, *a, **k)

    monkeypatch.setattr(Figure, "savefig", checking_savefig)
    mod.main(BASE + extra + ["--out", str(tmp_path / "run")])
    assert len(saved) >= 5
    assert not clipped, clipped
