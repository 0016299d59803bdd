"""benchmarks/precision.py: the paired fp32 / bf16 report, on run folders written here (the
runs themselves are long; the tool is run by hand or on a GPU, see its docstring)."""

import importlib.util
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_path = os.path.join(ROOT, "benchmarks", "precision.py")
spec = importlib.util.spec_from_file_location("precision_benchmark", _path)
precision = importlib.util.module_from_spec(spec)
sys.modules["precision_benchmark"] = precision
spec.loader.exec_module(precision)

NAME = "btcvae-shapes-quick"


def _run(root, p, seed, metrics, losses, seconds=1.0, every=100):
    """A finished run folder: metrics.json, checkpoint.pt, log.csv with one row per `every` updates."""
    out = precision.run_folder(str(root), NAME, p, seed)
    os.makedirs(out)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(dict(metrics, step=every * len(losses)), f)
    open(os.path.join(out, "checkpoint.pt"), "wb").close()
    with open(os.path.join(out, "log.csv"), "w") as f:
        f.write("step,loss,recon,tc,kl_z0,seconds,img_per_s\n")
        for i, loss in enumerate(losses):
            f.write(f"{every * (i + 1)},{loss},{loss - 10},2.5,0.1,{seconds},64\n")
    return out


def _collect(root, seeds=(0, 1)):
    return precision.collect(NAME, ["fp32", "bf16"], list(seeds), str(root))


def test_close_runs_are_within_seed_noise_with_exact_curve_gap_and_speed(tmp_path):
    _run(tmp_path, "fp32", 0, dict(mig=0.10, mig_5factors=0.2, factor_vae_score=0.70), [100, 50])
    _run(tmp_path, "fp32", 1, dict(mig=0.20, mig_5factors=0.3, factor_vae_score=0.80), [110, 60])
    _run(tmp_path, "bf16", 0, dict(mig=0.11, mig_5factors=0.2, factor_vae_score=0.71), [101, 50.5], seconds=2.0)
    _run(tmp_path, "bf16", 1, dict(mig=0.19, mig_5factors=0.3, factor_vae_score=0.79), [110, 60], seconds=2.0)
    r = _collect(tmp_path)
    assert r["curve"]["bf16"][0] == pytest.approx(100 * 1.5 / 150)        # |101-100| + |50.5-50| over 150
    assert r["curve"]["bf16"][1] == 0.0
    assert r["seed_curve"] == pytest.approx(100 * 20 / 150)
    assert r["speed"]["fp32"] == [pytest.approx(10.0)] * 2                 # 1 s per 100 updates
    assert r["speed"]["bf16"] == [pytest.approx(20.0)] * 2
    gap, spread, word = r["metrics"]["mig"]["verdicts"]["bf16"]
    assert gap == pytest.approx(0.0) and word == "within seed noise"
    text = precision.report([r], ["--only", NAME], "test device")
    assert "**bf16 is within seed noise of fp32**" in text
    assert "bf16 is 0.50x fp32's speed" in text
    assert "| fp32 s0 | 50.0000 | 40.0000 | 2.5000 |" in text             # final terms; kl_z0 left out
    assert "Smoke scale" not in text


def test_a_gap_larger_than_the_spread_is_reported_as_a_difference(tmp_path):
    for p, shift in (("fp32", 0.0), ("bf16", 0.3)):
        _run(tmp_path, p, 0, dict(mig=0.10 + shift, mig_5factors=0.2, factor_vae_score=0.7), [100])
        _run(tmp_path, p, 1, dict(mig=0.12 + shift, mig_5factors=0.2, factor_vae_score=0.7), [100])
    r = _collect(tmp_path)
    gap, spread, word = r["metrics"]["mig"]["verdicts"]["bf16"]
    assert gap == pytest.approx(0.3) and spread == pytest.approx(2 * 0.0141421, rel=1e-4) and word == "DIFFERS"
    line = precision.conclusion([r], "bf16")
    assert "NOT within seed noise" in line and "btcvae-shapes-quick: mig" in line


def test_one_seed_or_an_unfinished_run_is_not_concluded(tmp_path):
    for p in ("fp32", "bf16"):
        _run(tmp_path, p, 0, dict(mig=0.1, mig_5factors=0.2, factor_vae_score=0.7), [100])
    r = _collect(tmp_path, seeds=(0,))
    assert r["metrics"]["mig"]["verdicts"]["bf16"][2] == "undetermined (one seed)"
    assert precision.conclusion([r], "bf16").startswith("**Not concluded:** a comparison has only one seed")
    r = _collect(tmp_path, seeds=(0, 1))
    assert "2 of the runs have not finished" in precision.conclusion([r], "bf16")
    assert "smoke" not in precision.report([r], [], "d", iterations=None).lower()
    assert "Smoke scale: every run was cut to 10 updates" in precision.report([r], [], "d", iterations=10)


def test_dry_run_lists_paired_commands_and_bad_flags_are_one_sentence(tmp_path, capsys):
    assert precision.main(["--only", "jointvae-mnist", "--dry-run", "--runs-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 10                                                # 5 seeds x 2 precisions
    assert all("--train-split test" in ln for ln in lines)
    assert sum("--precision bf16" in ln for ln in lines) == 5
    assert f"{tmp_path}/precision/jointvae-mnist/bf16-s4" in lines[-1]
    with pytest.raises(SystemExit):                                        # fp32 is the reference
        precision.main(["--against", "fp32", "--dry-run"])
    assert "invalid choice: 'fp32'" in capsys.readouterr().err
    for bad in (["--iterations", "0"], ["--jobs", "0"], ["--time-budget", "nan"]):
        assert precision.main(bad + ["--dry-run", "--runs-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"precision.py: error: {bad[0]}") and err.count("\n") == 1


def test_throughput_puts_precisions_side_by_side_with_the_targets():
    spec_ = importlib.util.spec_from_file_location("throughput_benchmark",
                                                   os.path.join(ROOT, "benchmarks", "throughput.py"))
    throughput = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(throughput)
    rows = [("jointvae", "pure step [fp32]", 0.060, 0, ""), ("cascadevae", "step after t_d [fp32]", 0.100, 0, ""),
            ("cascadevae", "  of which u [fp32]", 0.050, 0, ""),
            ("jointvae", "pure step [bf16]", 0.040, 0, ""), ("cascadevae", "step after t_d [bf16]", 0.080, 0, ""),
            ("cascadevae", "  of which u [bf16]", 0.020, 0, "")]
    lines = throughput.side_by_side(rows, ["fp32", "bf16"])
    assert "| jointvae | pure step | 60.00 | 40.00 | 1.50x | bf16 >= 1.4x: met |" in lines
    assert "| cascadevae | step after t_d | 100.00 | 80.00 | 1.25x | bf16 >= 1.8x: NOT met |" in lines
    assert "| cascadevae |   of which u | 50.00 | 20.00 | 2.50x | - |" in lines     # a part: no target
    assert throughput.side_by_side(rows[:3], ["fp32"]) == []


def test_a_damaged_log_is_one_sentence_not_a_traceback(tmp_path, capsys):
    for p in ("fp32", "bf16"):
        for seed in (0, 1):
            _run(tmp_path, p, seed, dict(mig=0.1, mig_5factors=0.2, factor_vae_score=0.7), [100])
    with open(os.path.join(precision.run_folder(str(tmp_path), NAME, "bf16", 1), "log.csv"), "a") as f:
        f.write("200,not-a-number,1,1,1,1,64\n")
    rc = precision.main(["--only", NAME, "--collect-only", "--runs-dir", str(tmp_path), "--out", str(tmp_path / "p.md")])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("precision.py: error: ") and "is not a number" in err and err.count("\n") == 1
    assert not (tmp_path / "p.md").exists()


def test_runs_kept_without_weights_are_read_and_the_device_note_heads_the_report(tmp_path):
    for p in ("fp32", "bf16"):
        for seed in (0, 1):
            out = _run(tmp_path, p, seed, dict(mig=0.1 + 0.01 * seed, mig_5factors=0.2, factor_vae_score=0.7), [100])
            os.remove(os.path.join(out, "checkpoint.pt"))      # the committed paired runs keep no weights
    r = _collect(tmp_path)
    assert all(run["status"] == "done" for run in r["runs"].values())
    out = tmp_path / "precision.md"
    assert precision.main(["--only", NAME, "--seeds", "0", "1", "--collect-only", "--runs-dir", str(tmp_path),
                           "--out", str(out),
                           "--device-note", "a GPU elsewhere, torch 9.9"]) == 0
    text = out.read_text()
    assert "a GPU elsewhere, torch 9.9." in text.splitlines()[2]
    assert "**bf16 is within seed noise of fp32**" in text
    bad = precision.run_folder(str(tmp_path), NAME, "bf16", 1)
    with open(os.path.join(bad, "metrics.json"), "w") as f:
        f.write("[1, 2]")
    status, why = precision.run_status(bad)
    assert status == "failed" and "holds a JSON list, not the dict expected" in why
