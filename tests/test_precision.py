"""--precision bf16: the networks run under autocast, every equation stays float32, the loss
terms match fp32 within stated tolerances, eq. 6's assignment is unchanged, and a bf16 run
resumes exactly. (Speed and the paired fidelity runs are measured in benchmarks/, not here.)"""

import os

import pytest
import torch

import btcvae
import cascadevae
import jointvae
import nets
import runs

CPU = torch.device("cpu")
BASE = ["--dataset", "shapes", "--batch-size", "16", "--log-every", "5", "--eval-samples", "300",
        "--metric-votes", "10", "--eval-batch-size", "256", "--no-progress", "--device", "cpu"]


def _pair(make):
    """The same weights twice: fp32, and bf16 autocast on the networks."""
    torch.manual_seed(0)
    fp32 = make()
    bf16 = make()
    bf16.load_state_dict(fp32.state_dict())
    nets.set_precision(bf16, "bf16", CPU)
    return fp32.eval(), bf16.eval()


def _x(b=16, size=32):
    g = torch.Generator().manual_seed(1)
    return (torch.rand(b, 1, size, size, generator=g) > 0.7).float()      # (B, 1, H, W) binary images


def test_networks_return_float32_under_bf16_and_differ_from_fp32():
    fp32, bf16 = _pair(lambda: jointvae.JointVAE((1, 32, 32), 6, [3]))
    x = _x()
    a, b = fp32(x), bf16(x)
    assert b["x_logits"].dtype == b["mu"].dtype == torch.float32
    assert not torch.equal(a["x_logits"], b["x_logits"])                  # autocast really ran in bf16
    assert (a["x_logits"] - b["x_logits"]).abs().max() < 0.1


def test_jointvae_loss_terms_bf16_within_1_percent_of_fp32():
    fp32, bf16 = _pair(lambda: jointvae.JointVAE((1, 32, 32), 6, [3]))
    x = _x()
    terms = []
    for model in (fp32, bf16):
        o = model(x)
        terms.append(jointvae.jointvae_loss(x, o["x_logits"], o["mu"], o["logvar"], o["alphas"], 100, 30.0,
                                            [0.0, 5.0, 1000], [0.0, 5.0, 1000]))
    for key in ("loss", "recon", "kl_cont", "kl_disc"):
        assert terms[1][key].dtype == torch.float32
        assert float(terms[1][key]) == pytest.approx(float(terms[0][key]), rel=0.01, abs=1e-3), key


def test_btcvae_estimators_are_float32_and_match_within_tolerance():
    fp32, bf16 = _pair(lambda: btcvae.BetaTCVAE((1, 32, 32), 5, arch="conv"))
    x = _x(32)
    out = []
    for model in (fp32, bf16):
        mu, logvar = model.encode(x)
        z = mu + 0.1 * torch.exp(0.5 * logvar)                           # the same deterministic z rule
        out.append((btcvae.decompose_kl(z, mu, logvar, 1000, "mss"),
                    btcvae.btcvae_loss(x, model.decode(z), z, mu, logvar, 1000, 1.0, 6.0, 1.0, "mss")))
    (d32, l32), (d16, l16) = out
    for key in ("log_qz", "log_prod_qzd", "mi", "tc", "dwkl"):
        assert d16[key].dtype == torch.float32, key
    for key in ("loss", "recon", "kl"):
        assert float(l16[key]) == pytest.approx(float(l32[key]), rel=0.02, abs=0.05), key
    assert float(l16["tc"]) == pytest.approx(float(l32["tc"]), abs=0.1)


def test_cascadevae_u_is_float32_and_the_assignment_is_unchanged_without_near_ties():
    def make():
        model = cascadevae.CascadeVAE((1, 32, 32), 4, 5)
        with torch.no_grad():  # classes that decode differently, as after training
            model.decoder.to_features[0].weight[:, 4:] *= 30
        return model

    fp32, bf16 = _pair(make)
    x = _x(24)
    mu, _, _ = fp32.encode(x)
    u32, u16 = fp32.unary(x, mu), bf16.unary(x, mu)                       # (B, S)
    assert u16.dtype == torch.float32 and (u32 - u16).abs().max() > 0     # bf16 really ran
    # Keep rows whose best and second-best classes are well apart (no near-ties).
    top2 = u32.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 5 * (u32 - u16).abs().max()
    assert clear.sum() >= 5
    assert torch.equal(cascadevae.assign(u32[clear], 0.0), cascadevae.assign(u16[clear], 0.0))
    assert torch.equal(cascadevae.assign(u32[clear], 0.1), cascadevae.assign(u16[clear], 0.1))


def test_precision_is_part_of_the_objective_on_resume_and_fp16_is_one_sentence(tmp_path, capsys):
    out = str(tmp_path / "run")
    jointvae.main(BASE + ["--iterations", "4", "--no-eval", "--out", out, "--precision", "bf16"])
    ck = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    assert ck["config"]["precision"] == "bf16"
    with pytest.raises(SystemExit) as exc:
        jointvae.main(["--resume", out, "--precision", "fp32"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "precision: 'bf16' -> 'fp32'" in err[0]
    with pytest.raises(SystemExit) as exc:
        jointvae.main(BASE + ["--iterations", "4", "--out", str(tmp_path / "r2"), "--precision", "fp16"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "fp16 needs a CUDA GPU" in err[0], err
    assert not os.path.exists(tmp_path / "r2" / "checkpoint.pt")
    with pytest.raises(SystemExit) as exc:
        jointvae.main(BASE + ["--iterations", "4", "--out", str(tmp_path / "r3"), "--precision", "fp8"])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["jointvae", "btcvae", "cascadevae"])
def test_fp16_trains_with_a_gradient_scaler_that_resumes_exactly(name, tmp_path, monkeypatch):
    """The fp16 path (autocast + GradScaler) runs on CUDA only; CPU autocast also does fp16,
    so with CUDA's restriction lifted the same code runs here: the scaler's state is
    checkpointed, and a run paused by --stop-at resumes bit-exactly."""
    monkeypatch.setattr(nets, "FP16_DEVICE_TYPES", ("cuda", "cpu"))
    mod = {"jointvae": jointvae, "btcvae": btcvae, "cascadevae": cascadevae}[name]
    extra = {"btcvae": ["--arch", "conv"], "cascadevae": ["--r", "4", "--t-d", "3"]}.get(name, [])
    cmd = BASE + extra + ["--iterations", "8", "--no-eval", "--precision", "fp16"]
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    mod.main(cmd + ["--out", straight])
    mod.main(cmd + ["--out", split, "--stop-at", "5"])
    assert torch.load(os.path.join(split, "checkpoint.pt"), weights_only=True)["step"] == 5
    mod.main(["--resume", split, "--no-progress"])
    a = torch.load(os.path.join(straight, "checkpoint.pt"), weights_only=True)
    b = torch.load(os.path.join(split, "checkpoint.pt"), weights_only=True)
    assert a["step"] == b["step"] == 8
    assert a["scaler"]["scale"] == b["scaler"]["scale"] > 0 and a["scaler"] == b["scaler"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.isfinite(v).all() for v in a["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fp32_and_bf16_checkpoints_hold_no_scaler(precision, tmp_path):
    out = str(tmp_path / "run")
    jointvae.main(BASE + ["--iterations", "2", "--no-eval", "--out", out, "--precision", precision])
    ckpt = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    assert ckpt["step"] == 2 and ckpt["config"]["precision"] == precision and "scaler" not in ckpt


class _StopAt:
    def __init__(self, steps):
        self.steps = list(steps)

    def __call__(self, minutes):
        outer = self

        class Budget:
            signalled = None

            def expired(self):
                return bool(outer.steps) and runs_step[0] == outer.steps[0] and bool(outer.steps.pop(0))

            def close(self):
                pass
        return Budget()


runs_step = [0]


def test_a_bf16_run_paused_twice_equals_a_straight_run(tmp_path, monkeypatch):
    real_update = runs.TrainLog.update

    def update(self, step, *a, **k):
        runs_step[0] = step
        return real_update(self, step, *a, **k)

    monkeypatch.setattr(runs.TrainLog, "update", update)
    cmd = BASE + ["--iterations", "12", "--no-eval", "--precision", "bf16", "--save-every", "100"]
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    jointvae.main(cmd + ["--out", straight])
    monkeypatch.setattr(runs, "TimeBudget", _StopAt([4]))
    jointvae.main(cmd + ["--out", split, "--time-budget", "1"])
    step_of = lambda: torch.load(os.path.join(split, "checkpoint.pt"), weights_only=True)["step"]  # noqa: E731
    assert step_of() == 4                                                 # really paused
    monkeypatch.setattr(runs, "TimeBudget", _StopAt([7]))
    jointvae.main(["--resume", split, "--time-budget", "1", "--no-progress"])
    assert step_of() == 7
    monkeypatch.setattr(runs, "TimeBudget", _StopAt([]))
    jointvae.main(["--resume", split, "--no-progress"])
    a = torch.load(os.path.join(straight, "checkpoint.pt"), weights_only=True)
    b = torch.load(os.path.join(split, "checkpoint.pt"), weights_only=True)
    assert a["step"] == b["step"] == 12
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    rows = [runs.read_log_rows(os.path.join(d, "log.csv")) for d in (straight, split)]
    drop = {"seconds", "img_per_s"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in rows[0]] == \
        [{k: v for k, v in r.items() if k not in drop} for r in rows[1]]
