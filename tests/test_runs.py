"""Run folders, exactly as a user meets them, for all three scripts alike (runs.py):
resume into the named folder, no silent overwrite, changed flags on resume, exact logs
after a time-budget pause, and one sentence (exit 2, no traceback) for each failure."""

import errno
import hashlib
import json
import os
import random as pyrandom
import shutil

import numpy as np
import pytest
import torch

import btcvae
import cascadevae
import jointvae
import runs
from benchmarks import release

BASE = ["--dataset", "shapes", "--batch-size", "16", "--log-every", "5", "--eval-samples", "300",
        "--metric-votes", "10", "--eval-batch-size", "256", "--no-progress", "--device", "cpu"]
SCRIPTS = {
    "jointvae": (jointvae, BASE),
    "btcvae": (btcvae, BASE + ["--arch", "conv", "--decomp-samples", "50"]),
    # t_d = 6 < 12 iterations: the split below crosses the start of the alternating step.
    "cascadevae": (cascadevae, BASE + ["--r", "4", "--t-d", "6"]),
}
TIMING = {"seconds", "img_per_s", "solve_ms"}  # wall-clock columns: the only ones allowed to differ


def _rows(path):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in runs.read_log_rows(path)]


def _digest(folder):
    return {name: hashlib.sha256(open(os.path.join(folder, name), "rb").read()).hexdigest()
            for name in sorted(os.listdir(folder))}


def _error(capsys, mod, argv):
    with pytest.raises(SystemExit) as exc:
        mod.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err  # one sentence, no traceback
    return err[0]


class _StopAt:
    """A TimeBudget whose budget "expires" right after the given steps: a deterministic
    stand-in for the wall clock, through the same code path as --time-budget."""

    def __init__(self, steps):
        self.steps, self.calls = list(steps), 0

    def __call__(self, minutes):
        outer = self

        class Budget:
            signalled = None

            def close(self):
                pass

            def expired(self):
                outer.calls += 1
                return bool(outer.steps) and outer.calls == outer.steps[0]

        return Budget()


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_time_budget_split_in_three_equals_a_straight_run(name, tmp_path, monkeypatch, capsys):
    mod, base = SCRIPTS[name]
    common = base + ["--iterations", "12", "--seed", "3", "--no-eval"]
    mod.main(common + ["--out", str(tmp_path / "straight")])
    split = str(tmp_path / "split")
    # Pauses after steps 4 and 7 (neither a multiple of --log-every 5): three slices.
    monkeypatch.setattr(runs, "TimeBudget", _StopAt([4]))
    assert mod.main(common + ["--out", split, "--time-budget", "1"]) is None
    out = capsys.readouterr().out
    assert "reached at step 4 of 12" in out and f"--resume {split}" in out
    assert torch.load(os.path.join(split, "checkpoint.pt"), weights_only=True)["step"] == 4
    monkeypatch.setattr(runs, "TimeBudget", _StopAt([3]))
    mod.main(common + ["--resume", split, "--time-budget", "1"])
    assert torch.load(os.path.join(split, "checkpoint.pt"), weights_only=True)["step"] == 7
    monkeypatch.setattr(runs, "TimeBudget", _StopAt([]))
    mod.main(common + ["--resume", split])
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(os.path.join(split, "checkpoint.pt"), weights_only=True)
    assert a["step"] == b["step"] == 12
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # Every row, the first after each resume included (the window is carried).
    straight, resumed = _rows(tmp_path / "straight" / "log.csv"), _rows(os.path.join(split, "log.csv"))
    assert [r["step"] for r in straight] == ["5", "10", "12"]
    assert resumed == straight


def _evals(path):
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in runs.read_log_rows(path)]  # timing differs


def _same_state(a, b):
    assert a["step"] == b["step"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"]) and a["rng"]["python"] == b["rng"]["python"]
    assert torch.equal(a["rng"]["numpy"], b["rng"]["numpy"])


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_eval_every_leaves_training_bit_exact_and_resumes_exactly(name, tmp_path, capsys):
    mod, base = SCRIPTS[name]
    common = base + ["--iterations", "12", "--seed", "3", "--no-eval"]
    mod.main(common + ["--out", str(tmp_path / "plain")])
    with_evals = str(tmp_path / "evals")
    mod.main(common + ["--out", with_evals, "--eval-every", "4"])
    plain = torch.load(tmp_path / "plain" / "checkpoint.pt", weights_only=True)
    _same_state(plain, torch.load(os.path.join(with_evals, "checkpoint.pt"), weights_only=True))
    assert _rows(tmp_path / "plain" / "log.csv") == _rows(os.path.join(with_evals, "log.csv"))
    straight = _evals(os.path.join(with_evals, "evals.csv"))
    assert [r["step"] for r in straight] == ["4", "8", "12"]
    assert all(r["recon_eval"] not in ("", None) for r in straight)
    # Slices: a pause between evaluations, a pause on an evaluation's update (the evaluation
    # is skipped there and done first on resume), and a stale row after the checkpoint.
    split = str(tmp_path / "split")
    mod.main(common + ["--out", split, "--eval-every", "4", "--stop-at", "6"])
    assert "--stop-at 6 reached at step 6 of 12" in capsys.readouterr().out
    with open(os.path.join(split, "evals.csv"), "a") as f:
        f.write("10" + ",0" * (len(straight[0]) - 1) + "\n")     # written after the checkpoint: dropped
    mod.main(["--resume", split, "--stop-at", "8", "--no-progress"])
    assert [r["step"] for r in _evals(os.path.join(split, "evals.csv"))] == ["4"]
    mod.main(["--resume", split, "--no-progress"])
    _same_state(plain, torch.load(os.path.join(split, "checkpoint.pt"), weights_only=True))
    assert _rows(os.path.join(split, "log.csv")) == _rows(tmp_path / "plain" / "log.csv")
    assert _evals(os.path.join(split, "evals.csv")) == straight


def test_an_empty_evals_csv_gets_its_header_on_resume(tmp_path):
    mod, base = SCRIPTS["jointvae"]
    out = str(tmp_path / "run")
    mod.main(base + ["--iterations", "8", "--no-eval", "--out", out, "--eval-every", "5", "--stop-at", "4"])
    open(os.path.join(out, "evals.csv"), "w").close()         # a crash before the header was written
    mod.main(["--resume", out, "--no-progress"])
    rows = runs.read_log_rows(os.path.join(out, "evals.csv"))
    assert [r["step"] for r in rows] == ["5"] and float(rows[0]["recon_eval"]) > 0


def test_stop_at_and_eval_every_reject_bad_values(tmp_path, capsys):
    mod, base = SCRIPTS["jointvae"]
    out = str(tmp_path / "run")
    assert "--eval-every -1" in _error(capsys, mod, base + ["--iterations", "4", "--out", out, "--eval-every", "-1"])
    mod.main(base + ["--iterations", "8", "--no-eval", "--out", out, "--stop-at", "4"])
    capsys.readouterr()
    assert "already at update 4" in _error(capsys, mod, ["--resume", out, "--stop-at", "3"])


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_resume_writes_into_the_folder_it_is_given(name, tmp_path, monkeypatch):
    mod, base = SCRIPTS[name]
    run_a, run_b = str(tmp_path / "runA"), str(tmp_path / "runB")
    monkeypatch.setattr(runs, "TimeBudget", _StopAt([6]))
    mod.main(base + ["--iterations", "10", "--no-eval", "--out", run_a, "--time-budget", "1"])
    shutil.copytree(run_a, run_b)
    before = _digest(run_a)
    monkeypatch.setattr(runs, "TimeBudget", _StopAt([]))
    mod.main(["--resume", run_b, "--no-progress"])
    assert _digest(run_a) == before                          # the original is untouched
    assert torch.load(os.path.join(run_b, "checkpoint.pt"), weights_only=True)["step"] == 10
    assert json.load(open(os.path.join(run_b, "config.json")))["out"] == run_b
    assert [r["step"] for r in _rows(os.path.join(run_b, "log.csv"))] == ["5", "10"]


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_a_rerun_refuses_and_overwrite_clears_the_old_run(name, tmp_path, capsys):
    mod, base = SCRIPTS[name]
    out = str(tmp_path / "run")
    cmd = base + ["--iterations", "5", "--out", out]
    mod.main(cmd)
    assert os.path.exists(os.path.join(out, "metrics.json"))
    before = _digest(out)
    msg = _error(capsys, mod, cmd)
    assert out in msg and f"--resume {out}" in msg and "--overwrite" in msg
    assert _digest(out) == before
    # An invalid flag never touches an existing folder either.
    _error(capsys, mod, cmd + ["--seed", "-1"])
    assert _digest(out) == before
    mod.main(cmd[:-2] + ["--out", out, "--overwrite", "--no-eval", "--iterations", "3"])
    left = os.listdir(out)
    assert "metrics.json" not in left and not [f for f in left if f.endswith(".png")]
    assert torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)["step"] == 3


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_resume_applies_lr_refuses_model_changes_and_force_records_them(name, tmp_path, capsys):
    mod, base = SCRIPTS[name]
    out = str(tmp_path / "run")
    mod.main(base + ["--iterations", "5", "--no-eval", "--out", out])
    before = _digest(out)
    msg = _error(capsys, mod, ["--resume", out, "--batch-size", "8", "--seed", "4"])
    assert "batch_size: 16 -> 8" in msg and "seed: 0 -> 4" in msg and "--force-resume" in msg
    assert _digest(out) == before
    assert "dataset" in _error(capsys, mod, ["--resume", out, "--dataset", "mnist"])
    mod.main(["--resume", out, "--iterations", "7", "--lr", "0.01", "--no-progress"])
    ck = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    assert ck["optimizer"]["param_groups"][0]["lr"] == 0.01 and ck["step"] == 7
    assert json.load(open(os.path.join(out, "config.json")))["lr"] == 0.01
    mod.main(["--resume", out, "--iterations", "9", "--seed", "4", "--force-resume", "--no-progress"])
    log = open(os.path.join(out, "log.csv")).read()
    assert "# resumed at step 7 with seed: 0 -> 4" in log
    assert json.load(open(os.path.join(out, "config.json")))["seed"] == 4


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_eval_only_writes_only_the_folder_it_is_given(name, tmp_path):
    mod, base = SCRIPTS[name]
    run, ev = str(tmp_path / "run"), str(tmp_path / "eval")
    mod.main(base + ["--iterations", "5", "--no-eval", "--out", run])
    before = _digest(run)
    mod.main(["--eval-only", "--checkpoint", run, "--out", ev] + base)
    assert _digest(run) == before
    assert os.path.exists(os.path.join(ev, "metrics.json")) and os.path.exists(os.path.join(ev, "eval_config.json"))


def test_foreign_and_broken_checkpoints_are_one_sentence(tmp_path, capsys):
    jv_run = str(tmp_path / "jv")
    jointvae.main(SCRIPTS["jointvae"][1] + ["--iterations", "2", "--no-eval", "--out", jv_run])
    for mod in (btcvae, cascadevae):
        msg = _error(capsys, mod, ["--resume", jv_run])
        assert "written by jointvae.py" in msg
        msg = _error(capsys, mod, ["--eval-only", "--checkpoint", jv_run, "--out", str(tmp_path / "e")])
        assert "written by jointvae.py" in msg
    # A state_dict of another shape.
    ck = torch.load(os.path.join(jv_run, "checkpoint.pt"), weights_only=True)
    ck["model"]["encoder.head.weight"] = torch.zeros(3, 3)
    torch.save(ck, tmp_path / "wrong.pt")
    msg = _error(capsys, jointvae, ["--eval-only", "--checkpoint", str(tmp_path / "wrong.pt"),
                                    "--out", str(tmp_path / "e2")] + BASE)
    assert "do not fit this model" in msg
    # A checkpoint without RNG state cannot be resumed exactly.
    del ck["rng"]
    os.makedirs(tmp_path / "norng")
    torch.save(ck, tmp_path / "norng" / "checkpoint.pt")
    assert "no RNG state" in _error(capsys, jointvae, ["--resume", str(tmp_path / "norng")])


def test_out_that_cannot_hold_a_run_is_one_sentence(tmp_path, capsys, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    base = SCRIPTS["jointvae"][1] + ["--iterations", "2", "--no-eval"]
    assert "is a file" in _error(capsys, jointvae, base + ["--out", str(afile)])
    assert "which is a file" in _error(capsys, jointvae, base + ["--out", str(afile / "run")])
    # Root ignores permission bits, so the check itself is what is tested here.
    monkeypatch.setattr(runs.os, "access", lambda *a, **k: False)
    assert "not writable" in _error(capsys, jointvae, base + ["--out", str(tmp_path / "ro")])


def test_full_disk_keeps_the_old_checkpoint_and_leaves_no_tmp(tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "run")
    base = SCRIPTS["jointvae"][1] + ["--no-eval", "--save-every", "5"]
    jointvae.main(base + ["--iterations", "5", "--out", out])
    digest = _digest(out)["checkpoint.pt"]
    real_save = torch.save

    def full(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs.torch, "save", full)
    msg = _error(capsys, jointvae, ["--resume", out, "--iterations", "10", "--no-progress"])
    assert "No space left" in msg and "previous file is kept" in msg
    monkeypatch.setattr(runs.torch, "save", real_save)
    assert _digest(out)["checkpoint.pt"] == digest
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


@pytest.mark.parametrize("argv, words", [
    (["--epochs", "inf"], "finite"),
    (["--gamma", "nan"], "finite"),
    (["--temperature", "nan"], "finite"),
    (["--c-cont", "0", "nan", "100"], "finite"),
    (["--c-cont", "0", "5", "2.7"], "whole number"),
    (["--time-budget", "0"], "minutes"),
    (["--device", "meta"], "device"),
])
def test_bad_values_are_rejected_before_training(argv, words, tmp_path, capsys):
    out = tmp_path / "run"
    msg = _error(capsys, jointvae, SCRIPTS["jointvae"][1] + ["--iterations", "2", "--out", str(out)] + argv)
    assert words in msg
    assert not out.exists()


def test_unavailable_mps_is_one_sentence(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    msg = _error(capsys, cascadevae, SCRIPTS["cascadevae"][1] + ["--iterations", "2", "--device", "mps",
                                                                 "--out", str(tmp_path / "r")])
    assert "MPS" in msg and "--device cpu" in msg


def test_nan_before_the_first_checkpoint_says_none_was_kept(tmp_path, capsys, monkeypatch):
    real_batches = jointvae.data.batches

    def poisoned(*a, **k):
        for idx, x in real_batches(*a, **k):
            yield idx, torch.full_like(x, float("nan"))

    monkeypatch.setattr(jointvae.data, "batches", poisoned)
    msg = _error(capsys, jointvae, SCRIPTS["jointvae"][1] + ["--iterations", "5", "--out", str(tmp_path / "r")])
    assert "NaN" in msg and "no checkpoint was saved yet" in msg


def test_rng_state_roundtrip_is_exact(tmp_path):
    # A checkpoint's RNG state, saved and loaded with weights_only=True as the scripts
    # do, must continue every generator exactly where it stopped.
    runs.seed_everything(5)
    np.random.rand(3)                      # move numpy off a block boundary
    torch.save(runs.rng_state(), tmp_path / "rng.pt")
    expected = (torch.rand(4), np.random.rand(4), np.random.randn(), pyrandom.random())
    runs.seed_everything(99)
    runs.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (torch.rand(4), np.random.rand(4), np.random.randn(), pyrandom.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1])
    assert expected[2] == got[2] and expected[3] == got[3]


def test_resume_command_repeats_the_flags_with_resume():
    cmd = runs.resume_command("jointvae.py", ["--dataset", "mnist", "--out", "r", "--overwrite",
                                              "--time-budget", "30"], "r")
    assert cmd == "python jointvae.py --dataset mnist --time-budget 30 --resume r"


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_released_float16_weights_evaluate_to_the_manifest_metrics(name, tmp_path, capsys):
    mod, base = SCRIPTS[name]
    run, weights = str(tmp_path / "run"), str(tmp_path / "weights")
    mod.main(base + ["--iterations", "20", "--out", run, "--seed", "2"])
    path, entry = release.release(run, name, weights, protocol="test", command="python ...")
    assert os.path.basename(path) == f"{name}-shapes-s2.pt" and entry["updates"] == 20
    saved = torch.load(path, weights_only=True)
    assert all(v.dtype == torch.float16 for v in saved["model"].values() if v.is_floating_point())
    # model + Adam moments in float32 = 3 copies at 4 bytes; the release is 1 copy at 2 bytes.
    assert os.path.getsize(path) < 0.25 * os.path.getsize(os.path.join(run, "checkpoint.pt"))
    manifest = json.load(open(os.path.join(weights, "manifest.json")))["weights"]
    assert [e["file"] for e in manifest] == [f"{name}-shapes-s2.pt"]
    res = mod.main(base + ["--pretrained", "--seed", "2", "--weights-dir", weights, "--out", str(tmp_path / "ev")])
    checked = 0
    for key in ("accuracy_hungarian", "factor_vae_score", "mig"):
        if entry["metrics"].get(key) is not None:
            assert abs(res[key] - entry["metrics"][key]) <= 0.002, key   # 0.2 points
            checked += 1
    assert checked >= 2
    msg = _error(capsys, mod, base + ["--pretrained", "--seed", "7", "--weights-dir", weights])
    assert "no released" in msg and "--dataset shapes --seed 2" in msg
