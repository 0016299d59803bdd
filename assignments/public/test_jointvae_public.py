"""Public tests for the jointvae.py exercises: the module imports, the exercises keep their
signatures, their outputs have the documented shapes and keys, and a 20-update run on shapes
trains and evaluates. They check no values: the graded tests do. A test that reaches an
exercise not written yet is skipped and names it (tests/conftest.py)."""

import inspect
import math

import torch

import jointvae as jv

SIGNATURES = {
    "reparameterize": ["mu", "logvar"],
    "sample_gumbel_softmax": ["logits", "temperature", "eps"],
    "kl_categorical_uniform": ["probs"],
    "linear_capacity": ["step", "c_min", "c_max", "num_iters"],
    "jointvae_loss": ["x", "x_logits", "mu", "logvar", "alphas", "step", "gamma", "c_cont", "c_disc", "beta"],
}


def test_exercises_keep_their_signatures():
    for name, params in SIGNATURES.items():
        assert list(inspect.signature(getattr(jv, name)).parameters) == params, name


def test_reparameterize_shape():
    z = jv.reparameterize(torch.zeros(4, 3), torch.zeros(4, 3))
    assert z.shape == (4, 3) and z.dtype == torch.float32


def test_gumbel_softmax_shape():
    y = jv.sample_gumbel_softmax(torch.zeros(4, 5), 0.67)
    assert y.shape == (4, 5) and torch.isfinite(y).all()


def test_kl_categorical_shape():
    kl = jv.kl_categorical_uniform(torch.full((4, 5), 0.2))
    assert kl.shape == (4,)


def test_linear_capacity_is_a_number():
    assert isinstance(float(jv.linear_capacity(10, 0.0, 5.0, 100)), float)


def test_loss_returns_the_documented_terms():
    x = torch.rand(6, 1, 32, 32).round()
    t = jv.jointvae_loss(x, torch.zeros_like(x), torch.zeros(6, 4), torch.zeros(6, 4),
                         [torch.full((6, 10), 0.1), torch.full((6, 3), 1 / 3)], step=1, gamma=30.0,
                         c_cont=(0.0, 5.0, 100), c_disc=(0.0, 5.0, 100))
    assert {"loss", "recon", "kl_cont", "kl_disc", "c_cont", "c_disc", "kl_cont_units", "kl_disc_vars"} <= set(t)
    assert t["loss"].shape == () and t["kl_cont_units"].shape == (4,) and t["kl_disc_vars"].shape == (2,)
    assert math.isfinite(float(t["c_cont"])) and math.isfinite(float(t["c_disc"]))


def test_smoke_run_on_shapes(tmp_path):
    res = jv.main(["--dataset", "shapes", "--batch-size", "16", "--log-every", "5", "--eval-samples", "300",
                   "--metric-votes", "10", "--eval-batch-size", "256", "--no-progress", "--device", "cpu",
                   "--iterations", "20", "--out", str(tmp_path / "run")])
    assert res["step"] == 20 and (tmp_path / "run" / "metrics.json").exists()
