"""jointvae.py: every equation against a closed form or an independent computation,
the released-weights mapping, a smoke run, exact resume, and the bad-input sentences."""

import csv
import hashlib
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn
from torch.distributions import Categorical, Normal, kl_divergence

import jointvae as jv

# --------------------------------------------------------------------------- KL terms


def test_kl_normal_matches_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(7, 5) * 2, torch.randn(7, 5)  # (B, D)
    ours = jv.kl_normal(mu, logvar)
    ref = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(torch.zeros_like(mu), torch.ones_like(mu)))
    assert ours.shape == (7, 5)
    assert torch.allclose(ours, ref, atol=1e-5)
    assert torch.allclose(jv.kl_normal(torch.zeros(3, 2), torch.zeros(3, 2)), torch.zeros(3, 2))


@pytest.mark.parametrize("k", [2, 3, 10])
def test_kl_categorical_uniform_matches_closed_form_and_bound(k):
    torch.manual_seed(k)
    probs = torch.softmax(torch.randn(50, k) * 3, dim=-1)  # (B, K)
    ours = jv.kl_categorical_uniform(probs)
    ref = kl_divergence(Categorical(probs=probs), Categorical(probs=torch.full_like(probs, 1.0 / k)))
    assert ours.shape == (50,)
    assert torch.allclose(ours, ref, atol=1e-5)
    # App. C: KL = log K - H(P) <= log K, equality at one-hot, zero at uniform.
    assert (ours <= math.log(k) + 1e-6).all() and (ours >= -1e-6).all()
    onehot = F.one_hot(torch.arange(k) % k, k).float()
    assert torch.allclose(jv.kl_categorical_uniform(onehot), torch.full((k,), math.log(k)), atol=1e-6)
    assert torch.allclose(jv.kl_categorical_uniform(torch.full((4, k), 1.0 / k)), torch.zeros(4), atol=1e-6)


def test_kl_categorical_gradient_is_finite_when_softmax_underflows():
    # eq. 7 with C_c = log K pushes alpha to one-hot; float32 softmax then returns exact
    # zeros, where an exact x log x has an infinite derivative (the NaN this guards against).
    logits = torch.tensor([[0.0, 120.0, -120.0], [3.0, 1.0, 0.0]], requires_grad=True)
    probs = torch.softmax(logits, dim=-1)
    assert (probs == 0).any()
    kl = jv.kl_categorical_uniform(probs)
    kl.sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert kl[0].item() == pytest.approx(math.log(3), abs=1e-6)


# --------------------------------------------------------------------------- capacity schedule


def test_linear_capacity_schedule():
    assert jv.linear_capacity(0, 0.0, 5.0, 25000) == 0.0
    assert jv.linear_capacity(12500, 0.0, 5.0, 25000) == pytest.approx(2.5)
    assert jv.linear_capacity(25000, 0.0, 5.0, 25000) == pytest.approx(5.0)
    assert jv.linear_capacity(10 ** 6, 0.0, 5.0, 25000) == pytest.approx(5.0)  # held after the ramp
    assert jv.linear_capacity(50, 1.0, 3.0, 100) == pytest.approx(2.0)


def _toy_terms(b=6, d=4, ks=(10,), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 1, 32, 32, generator=g).round()        # (B, 1, 32, 32) binary
    logits = torch.randn(b, 1, 32, 32, generator=g)
    mu, logvar = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g) * 0.3
    alphas = [torch.softmax(torch.randn(b, k, generator=g), -1) for k in ks]
    return x, logits, mu, logvar, alphas


def test_discrete_capacity_is_clipped_at_sum_log_k():
    x, logits, mu, logvar, alphas = _toy_terms(ks=(10,))
    t = jv.jointvae_loss(x, logits, mu, logvar, alphas, step=25000, gamma=30.0,
                         c_cont=(0.0, 5.0, 25000), c_disc=(0.0, 5.0, 25000))
    assert t["c_cont"] == pytest.approx(5.0)
    assert t["c_disc"] == pytest.approx(math.log(10))           # 5 > log 10: clipped (App. C)
    x, logits, mu, logvar, alphas = _toy_terms(ks=(2, 2, 2))
    t = jv.jointvae_loss(x, logits, mu, logvar, alphas, step=100000, gamma=300.0,
                         c_cont=(0.0, 30.0, 100000), c_disc=(0.0, 5.0, 100000))
    assert t["c_disc"] == pytest.approx(3 * math.log(2))        # Chairs: 3 binary variables
    t = jv.jointvae_loss(x, logits, mu, logvar, alphas, step=10000, gamma=300.0,
                         c_cont=(0.0, 30.0, 100000), c_disc=(0.0, 5.0, 100000))
    assert t["c_disc"] == pytest.approx(0.5)                    # below the clip: the ramp


# --------------------------------------------------------------------------- eq. 7 and baselines


def test_eq7_terms_add_up_with_independent_reductions():
    x, logits, mu, logvar, alphas = _toy_terms(b=5, d=3, ks=(10, 3))
    t = jv.jointvae_loss(x, logits, mu, logvar, alphas, step=1000, gamma=30.0,
                         c_cont=(0.0, 5.0, 25000), c_disc=(0.0, 5.0, 25000))
    p = torch.sigmoid(logits)
    # Bernoulli NLL summed over pixels, mean over the batch, written out.
    recon = -(x * p.log() + (1 - x) * (1 - p).log()).reshape(5, -1).sum(1).mean()
    kl_z = sum(kl_divergence(Normal(mu[i], (0.5 * logvar[i]).exp()), Normal(0.0, 1.0)).sum() for i in range(5)) / 5
    kl_c = sum(kl_divergence(Categorical(probs=a), Categorical(probs=torch.full_like(a, 1 / a.shape[1]))).mean()
               for a in alphas)
    c_z, c_c = 5.0 * 1000 / 25000, 5.0 * 1000 / 25000
    assert t["recon"].item() == pytest.approx(recon.item(), rel=1e-5)
    assert t["kl_cont"].item() == pytest.approx(kl_z.item(), rel=1e-5)
    assert t["kl_disc"].item() == pytest.approx(kl_c.item(), rel=1e-5)
    expected = recon + 30.0 * abs(kl_z - c_z) + 30.0 * abs(kl_c - c_c)
    assert t["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert t["kl_cont_units"].shape == (3,) and t["kl_disc_vars"].shape == (2,)
    assert t["kl_cont_units"].sum().item() == pytest.approx(t["kl_cont"].item(), rel=1e-6)


def test_baselines_eq1_eq3_eq6():
    x, logits, mu, logvar, alphas = _toy_terms(ks=(10,))
    cap = dict(step=5000, gamma=30.0, c_cont=(0.0, 5.0, 25000), c_disc=(0.0, 5.0, 25000))
    eq7 = jv.jointvae_loss(x, logits, mu, logvar, alphas, **cap)
    eq6 = jv.jointvae_loss(x, logits, mu, logvar, alphas, beta=4.0, **cap)
    assert eq6["loss"].item() == pytest.approx((eq7["recon"] + 4.0 * (eq7["kl_cont"] + eq7["kl_disc"])).item(), rel=1e-6)
    eq3 = jv.jointvae_loss(x, logits, mu, logvar, [], **cap)
    assert eq3["kl_disc"].item() == 0.0
    assert eq3["loss"].item() == pytest.approx((eq7["recon"] + 30.0 * (eq7["kl_cont"] - 1.0).abs()).item(), rel=1e-6)
    eq1 = jv.jointvae_loss(x, logits, mu, logvar, [], beta=4.0, **cap)
    assert eq1["loss"].item() == pytest.approx((eq7["recon"] + 4.0 * eq7["kl_cont"]).item(), rel=1e-6)
    assert jv.objective_name(dict(beta=None, disc=[10])).startswith("eq. 7")
    assert jv.objective_name(dict(beta=None, disc=[])).startswith("eq. 3")
    assert jv.objective_name(dict(beta=4.0, disc=[])).startswith("eq. 1")
    assert jv.objective_name(dict(beta=4.0, disc=[10])).startswith("eq. 6")


def test_loss_gradient_flows_to_all_parameters():
    torch.manual_seed(0)
    model = jv.JointVAE((1, 32, 32), cont=4, disc=[3, 2])
    x = torch.rand(8, 1, 32, 32)
    out = model(x)
    t = jv.jointvae_loss(x, out["x_logits"], out["mu"], out["logvar"], out["alphas"], step=10,
                         gamma=30.0, c_cont=(0.0, 5.0, 100), c_disc=(0.0, 5.0, 100))
    t["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert out["latent"].shape == (8, 4 + 3 + 2)


# --------------------------------------------------------------------------- eq. 8 Gumbel-softmax


def test_gumbel_softmax_on_simplex_and_one_hot_as_tau_to_zero():
    torch.manual_seed(0)
    logits = torch.randn(2000, 5)                               # (B, K)
    for tau in (5.0, 0.67, 0.1):
        y = jv.sample_gumbel_softmax(logits, tau)
        assert y.shape == (2000, 5) and (y >= 0).all()
        assert torch.allclose(y.sum(-1), torch.ones(2000), atol=1e-5)
    mean_max = [jv.sample_gumbel_softmax(logits, tau).max(-1).values.mean().item() for tau in (5.0, 1.0, 0.1, 0.01)]
    assert mean_max == sorted(mean_max)                          # sharper as tau decreases
    assert mean_max[-1] > 0.99 and mean_max[0] < 0.5


def test_gumbel_softmax_argmax_follows_categorical_chi_square():
    torch.manual_seed(123)
    probs = torch.tensor([0.5, 0.25, 0.15, 0.07, 0.03])
    n = 20000
    y = jv.sample_gumbel_softmax(probs.log().expand(n, 5), 0.67)  # argmax is tau-independent
    counts = torch.bincount(y.argmax(-1), minlength=5).numpy()
    assert stats.chisquare(counts, (probs * n).numpy()).pvalue > 1e-3
    # The same test rejects a wrong distribution: it has the power to fail.
    wrong = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05])
    assert stats.chisquare(counts, (wrong * n).numpy()).pvalue < 1e-6


def test_eval_mode_uses_mean_and_argmax_one_hot():
    torch.manual_seed(0)
    model = jv.JointVAE((1, 32, 32), cont=3, disc=[4]).eval()
    x = torch.rand(6, 1, 32, 32)
    out1, out2 = model(x), model(x)
    assert torch.equal(out1["latent"], out2["latent"])          # deterministic
    assert torch.equal(out1["latent"][:, :3], out1["mu"])
    assert torch.equal(out1["latent"][:, 3:], F.one_hot(out1["alphas"][0].argmax(-1), 4).float())


# --------------------------------------------------------------------------- the author's weights


class _AuthorModel(nn.Module):
    """The released model's layer names and forward pass, written independently of ours
    (eval mode: z = mean, c = one-hot argmax of softmax(fc_alphas), decoder ends in sigmoid)."""

    def __init__(self, cont, disc, size64=False):
        super().__init__()
        enc = [nn.Conv2d(1, 32, 4, 2, 1), nn.ReLU()]
        if size64:
            enc += [nn.Conv2d(32, 32, 4, 2, 1), nn.ReLU()]
        enc += [nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(), nn.Conv2d(64, 64, 4, 2, 1), nn.ReLU()]
        self.img_to_features = nn.Sequential(*enc)
        self.features_to_hidden = nn.Sequential(nn.Linear(1024, 256), nn.ReLU())
        self.fc_mean, self.fc_log_var = nn.Linear(256, cont), nn.Linear(256, cont)
        self.fc_alphas = nn.ModuleList([nn.Linear(256, k) for k in disc])
        self.latent_to_features = nn.Sequential(nn.Linear(cont + sum(disc), 256), nn.ReLU(),
                                                nn.Linear(256, 1024), nn.ReLU())
        dec = [nn.ConvTranspose2d(64, 64, 4, 2, 1), nn.ReLU()] if size64 else []
        dec += [nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(32, 32, 4, 2, 1), nn.ReLU(),
                nn.ConvTranspose2d(32, 1, 4, 2, 1), nn.Sigmoid()]
        self.features_to_img = nn.Sequential(*dec)

    def forward(self, x):
        h = self.features_to_hidden(self.img_to_features(x).view(x.size(0), -1))
        mean, alphas = self.fc_mean(h), [F.softmax(f(h), dim=1) for f in self.fc_alphas]
        c = [F.one_hot(a.argmax(1), a.shape[1]).float() for a in alphas]
        return self.features_to_img(self.latent_to_features(torch.cat([mean] + c, 1)).view(-1, 64, 4, 4)), mean, alphas


@pytest.mark.parametrize("size64,cont,disc", [(False, 10, [10]), (True, 6, [3])])
def test_official_weights_map_onto_our_modules(size64, cont, disc):
    torch.manual_seed(1)
    author = _AuthorModel(cont, disc, size64).eval()
    state = {k: v for k, v in author.state_dict().items()}      # no Sigmoid params: keys as released
    size = (1, 64, 64) if size64 else (1, 32, 32)
    ours = jv.load_official_weights(jv.JointVAE(size, cont, disc), state).eval()
    x = torch.rand(4, *size)
    ref_img, ref_mean, ref_alphas = author(x)
    out = ours(x)
    assert torch.allclose(out["mu"], ref_mean, atol=1e-5)
    assert torch.allclose(out["alphas"][0], ref_alphas[0], atol=1e-6)
    assert torch.allclose(torch.sigmoid(out["x_logits"]), ref_img, atol=1e-5)
    with pytest.raises(ValueError, match="--cont"):
        jv.load_official_weights(jv.JointVAE(size, cont + 1, disc), state)


# --------------------------------------------------------------------------- presets and flags


def test_presets_follow_appendix_c():
    cfg = jv.make_config(["--dataset", "fashion-mnist"])
    assert (cfg["gamma"], cfg["c_cont"], cfg["c_disc"], cfg["lr"], cfg["batch_size"], cfg["epochs"]) == \
        (100.0, [0.0, 5.0, 50000], [0.0, 10.0, 50000], 5e-4, 64, 100)
    cfg = jv.make_config(["--dataset", "shapes"])
    assert (cfg["cont"], cfg["disc"], cfg["gamma"], cfg["c_cont"], cfg["c_disc"]) == \
        (6, [3], 150.0, [0.0, 40.0, 300000], [0.0, 1.1, 300000])
    cfg = jv.make_config(["--dataset", "chairs", "--gamma", "7", "--disc", "2", "2"])
    assert (cfg["gamma"], cfg["disc"], cfg["cont"], cfg["lr"]) == (7.0, [2, 2], 32, 1e-4)
    assert jv.make_config([])["dataset"] == "mnist" and jv.make_config([])["eval_split"] == "test"


# --------------------------------------------------------------------------- smoke, resume, bad input

SMOKE = ["--dataset", "shapes", "--batch-size", "16", "--log-every", "5", "--eval-samples", "600",
         "--metric-votes", "20", "--eval-batch-size", "256", "--no-progress", "--device", "cpu"]


def test_smoke_run_on_shapes_writes_every_file(tmp_path):
    out = tmp_path / "run"
    res = jv.main(SMOKE + ["--iterations", "20", "--out", str(out)])
    for name in ("config.json", "log.csv", "checkpoint.pt", "metrics.json", "reconstructions.png",
                 "samples_per_discrete.png", "traversals.png", "traversal_discrete.png",
                 "kl_during_training.png", "loss.png", "confusion.png"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [5, 10, 15, 20]
    assert {"kl_z0", "kl_z5", "kl_c0", "c_cont", "c_disc", "img_per_s"} <= set(rows[0])
    assert float(rows[-1]["c_cont"]) == pytest.approx(40.0 * 20 / 300000, rel=1e-4)
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_eval"] == 600 and len(m["kl_per_unit"]) == 6 and len(m["kl_disc_per_var"]) == 1
    # Three shapes, three codes: the best one-to-one map matches at least a third (pigeonhole),
    # and an accuracy is a count of the evaluated images.
    assert 1 / 3 - 1e-9 <= m["accuracy_hungarian"] <= m["accuracy_majority"] <= 1.0
    for key in ("accuracy_hungarian", "accuracy_majority"):
        assert abs(m[key] * m["n_eval"] - round(m[key] * m["n_eval"])) < 1e-6
    for key in ("mig", "mig_5factors", "factor_vae_score"):  # shapes has factors: every metric exists
        assert m[key] is not None and 0.0 <= m[key] <= 1.0 and key not in m["null_reasons"], key
    assert res["dataset"] == "shapes"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["objective"].startswith("eq. 7") and cfg["iterations_total"] == 20


def _params(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _error_of(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        jv.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1]


def test_bad_flags_give_one_sentence(capsys, tmp_path):
    assert "at least 2 categories" in _error_of(capsys, ["--disc", "1", "--out", str(tmp_path)])
    assert "gamma" in _error_of(capsys, ["--gamma", "-1", "--out", str(tmp_path)])
    assert "invalid choice" in _error_of(capsys, ["--dataset", "cifar"])
    assert "--checkpoint" in _error_of(capsys, ["--eval-only"])
    msg = _error_of(capsys, ["--dataset", "mnist", "--data-dir", str(tmp_path / "nowhere"), "--no-download",
                             "--iterations", "1", "--out", str(tmp_path / "r")])
    assert msg.startswith("jointvae.py: error:") and "MNIST" in msg


def test_unsupported_image_size_is_one_sentence(capsys, tmp_path, monkeypatch):
    class Tiny:
        image_size, labels, factors, factor_names, factor_sizes = (1, 28, 28), None, None, None, None

        def __len__(self):
            return 100

        def batch(self, idx):
            return torch.rand(len(idx), 1, 28, 28)

    monkeypatch.setattr(jv.data, "load_dataset", lambda *a, **k: Tiny())
    msg = _error_of(capsys, SMOKE + ["--iterations", "2", "--out", str(tmp_path / "r")])
    assert "not supported" in msg and "32x32 or 64x64" in msg


def test_nan_loss_stops_and_keeps_the_checkpoint(capsys, tmp_path, monkeypatch):
    out = tmp_path / "run"
    jv.main(SMOKE + ["--no-eval", "--iterations", "5", "--out", str(out)])
    digest = hashlib.sha256((out / "checkpoint.pt").read_bytes()).hexdigest()
    real_batches = jv.data.batches

    def poisoned(*a, **k):
        for idx, x in real_batches(*a, **k):
            yield idx, torch.full_like(x, float("nan"))

    monkeypatch.setattr(jv.data, "batches", poisoned)
    msg = _error_of(capsys, ["--resume", str(out), "--iterations", "10", "--no-progress"])
    assert "NaN" in msg and "checkpoint" in msg
    assert hashlib.sha256((out / "checkpoint.pt").read_bytes()).hexdigest() == digest
    assert not os.path.exists(str(out / "checkpoint.pt.tmp"))


def test_corrupt_checkpoint_is_one_sentence(capsys, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    msg = _error_of(capsys, ["--eval-only", "--checkpoint", str(bad), "--dataset", "shapes"])
    assert "corrupt" in msg


def test_recon_scale_on_rgb_is_the_authors_mean_over_batch_and_channels():
    # The author's term: BCE(recon.view(-1, H*W), x.view(-1, H*W)) * H*W, i.e. summed over
    # pixels and averaged over batch AND channels; 1-channel data is the per-image sum.
    torch.manual_seed(0)
    for c in (1, 3):
        x = torch.rand(4, c, 8, 8)
        logits = torch.randn(4, c, 8, 8)
        mu, logvar = torch.zeros(4, 2), torch.zeros(4, 2)
        terms = jv.jointvae_loss(x, logits, mu, logvar, [], 1, 30.0, [0.0, 5.0, 100], [0.0, 5.0, 100])
        authors = torch.nn.functional.binary_cross_entropy(torch.sigmoid(logits).view(-1, 64), x.view(-1, 64)) * 64
        assert float(terms["recon"]) == pytest.approx(float(authors), rel=1e-5)
        per_image = torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="sum") / 4
        assert float(terms["recon"]) == pytest.approx(float(per_image) / c, rel=1e-6)
