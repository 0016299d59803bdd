"""Every figure the three scripts write keeps its text inside the canvas (no clipped
title, label or tick label) and explains itself (the confusion matrix in the per-code
figures' order with the accuracy in its title, traversals of the informative units only,
reference lines named in the legend, an animated traversal), on a smoke run of each on
generated data."""

import os

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg", force=True)
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.text import Text  # noqa: E402

import btcvae  # noqa: E402
import cascadevae  # noqa: E402
import jointvae  # noqa: E402
import metrics  # noqa: E402

BASE = ["--dataset", "shapes", "--batch-size", "16", "--log-every", "5", "--eval-samples", "300",
        "--metric-votes", "10", "--eval-batch-size", "256", "--no-progress", "--device", "cpu", "--iterations", "10"]


@pytest.mark.parametrize("mod, extra", [(jointvae, []), (btcvae, ["--decomp-samples", "50"]),
                                        (cascadevae, ["--r", "4", "--t-d", "5"])],
                         ids=["jointvae", "btcvae", "cascadevae"])
def test_no_text_is_clipped(mod, extra, tmp_path, monkeypatch):
    clipped, saved, drawn = [], [], {}
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
        ax = fig.axes[0]
        legend = ax.get_legend()
        drawn[os.path.basename(str(path))] = dict(
            title=ax.get_title(), yticks=[t.get_text() for t in ax.get_yticklabels()],
            rows=[t.get_text() for t in ax.texts if t.get_ha() == "right"],   # save_image_grid's row labels
            cells=[t.get_fontsize() for t in ax.texts],
            legend=[t.get_text() for t in legend.get_texts()] if legend else [])
        return real_savefig(fig, path, *a, **k)

    monkeypatch.setattr(Figure, "savefig", checking_savefig)
    res = mod.main(BASE + extra + ["--out", str(tmp_path / "run")])
    assert len(saved) >= 5
    assert not clipped, clipped

    # Traversals: the units above 0.1 nats ranked by KL (at least one), labelled with their KL.
    kl = np.asarray(res["kl_per_unit"])
    ranked = [int(j) for j in np.argsort(-kl, kind="stable")]
    units = [j for j in ranked if kl[j] > metrics.PRUNE_THRESHOLD] or ranked[:1]
    trav = drawn["traversals.png"]
    assert [t for t in trav["rows"] if t.startswith("z")] == [f"z{j}  KL {kl[j]:.2f}" for j in units]
    if len(units) < len(kl):
        assert f"{len(kl) - len(units)} inactive unit" in trav["title"]
    # The animated traversal: the same units, 10 values forth and back.
    from PIL import Image
    gif = Image.open(tmp_path / "run" / "traversals.gif")
    assert gif.n_frames == 18 and os.path.getsize(tmp_path / "run" / "traversals.gif") < 1_000_000
    assert gif.size[1] == 20 + int(np.ceil(min(len(units), 10) / 5)) * (64 + 15 + 2)
    # Reference lines are named in the legend, never written on their own line.
    for name, t in drawn.items():
        if name.endswith("during_training.png"):
            assert not t["cells"], (name, "text drawn in the axes")
    if mod is not btcvae:
        # The confusion matrix: accuracy in the title, rows in the order of the per-code figures.
        conf = drawn["confusion.png"]
        assert f"Hungarian {100 * res['accuracy_hungarian']:.1f} %" in conf["title"]
        assert f"majority {100 * res['accuracy_majority']:.1f} %" in conf["title"]
        assert drawn["samples_per_discrete.png"]["rows"] == conf["yticks"]
        assert drawn["traversal_discrete.png"]["rows"] == conf["yticks"]
        assert min(conf["cells"]) >= 8
    if mod is jointvae:
        assert any(t.startswith("C_c clip") for t in drawn["kl_during_training.png"]["legend"])
