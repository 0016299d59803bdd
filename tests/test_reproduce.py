"""benchmarks/reproduce.py: every protocol's commands are valid configurations of the
method scripts, the table is computed from run folders only, and a partial re-run keeps
the other arms' committed rows."""

import csv
import importlib.util
import json
import os
import sys

import pytest

import btcvae
import cascadevae
import jointvae

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("reproduce", os.path.join(ROOT, "benchmarks", "reproduce.py"))
reproduce = importlib.util.module_from_spec(spec)
sys.modules["reproduce"] = reproduce  # as `import reproduce` would: submitit pickles its job class by value
spec.loader.exec_module(reproduce)

SCRIPTS = {"jointvae.py": jointvae, "btcvae.py": btcvae, "cascadevae.py": cascadevae}
ARMS = [(p, a) for p, s in reproduce.PROTOCOLS.items() for a in s["arms"]]


@pytest.mark.parametrize("protocol,arm", ARMS)
@pytest.mark.parametrize("quick", [False, True])
def test_every_command_is_a_valid_config(protocol, arm, quick, tmp_path):
    spec_ = reproduce.PROTOCOLS[protocol]
    cmd = reproduce.command(spec_, arm, 3, str(tmp_path / "run"), quick, "data", "cpu", [])
    module = SCRIPTS[os.path.basename(cmd[1])]
    cfg = module.make_config(cmd[2:])  # parses the flags and validates the combination
    assert cfg["seed"] == 3 and cfg["out"] == str(tmp_path / "run")
    full = module.make_config(reproduce.command(spec_, arm, 3, "x", False, "data", "cpu", [])[2:])
    if quick:
        quick_iters = cfg["iterations"]
        n = {"mnist": 10000 if cfg["train_split"] == "test" else 60000, "fashion-mnist": 60000,
             "shapes": 737280}[cfg["dataset"]]
        full_iters = full["iterations"] or full["epochs"] * (n // full["batch_size"])
        assert quick_iters is not None and quick_iters < full_iters
    else:
        # the paper protocol is the script's own per-dataset preset: no training flag
        # (length, optimiser, schedules, latent sizes) is overridden
        preset = module.make_config(["--dataset", cfg["dataset"]])
        keys = {"iterations", "epochs", "lr", "batch_size", "c_cont", "c_disc", "r", "t_d",
                "beta_h", "beta_l", "lam", "cont", "disc", "m", "S"} & set(preset)
        assert len(keys) >= 5 and {k: cfg[k] for k in keys} == {k: preset[k] for k in keys}


def _fake_run(folder, metrics, iterations, wall):
    os.makedirs(folder)
    with open(os.path.join(folder, "metrics.json"), "w") as f:
        json.dump(dict(metrics, device="cpu"), f)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"iterations_total": iterations}, f)
    with open(os.path.join(folder, "reproduce.json"), "w") as f:
        json.dump({"wall_seconds": wall}, f)


def _rows(path):
    with open(path, newline="") as f:
        return {(r["method"], r["metric"]): r for r in csv.DictReader(f)}


def test_collect_mean_std_and_not_run(tmp_path):
    runs, results = tmp_path / "runs", tmp_path / "results"
    for seed, acc in [(0, 0.5), (1, 0.6)]:
        _fake_run(reproduce.run_dir(str(runs), "fashion-accuracy", True, "jointvae", seed),
                  {"accuracy_hungarian": acc, "accuracy_majority": None}, 15000, 600.0 * (seed + 1))
    reproduce.main(["--protocol", "fashion-accuracy", "--quick", "--collect-only", "--seeds", "0", "1", "2",
                    "--runs-dir", str(runs), "--results-dir", str(results)])
    rows = _rows(results / "fashion-accuracy-quick.csv")
    r = rows[("jointvae", "accuracy_hungarian (%)")]
    assert r["ours"] == "55.00 +- 7.07"  # percent, sample std of (50, 60)
    assert r["seeds"] == "2/3" and r["iterations"] == "15000" and r["wall_per_run"] == "15.0 min"
    assert "50.99 (2.5)" in r["paper"]
    assert rows[("jointvae", "accuracy_majority (%)")]["ours"] == "not run"
    assert rows[("cascadevae", "accuracy_hungarian (%)")]["ours"] == "not run"
    md = (results / "fashion-accuracy-quick.md").read_text()
    assert "NOT the paper protocol" in md and "55.00 +- 7.07" in md


def test_rerunning_one_arm_keeps_the_other_rows(tmp_path):
    runs, results = tmp_path / "runs", tmp_path / "results"
    _fake_run(reproduce.run_dir(str(runs), "mnist-accuracy", True, "cascadevae", 0),
              {"accuracy_hungarian": 0.4, "accuracy_majority": 0.45}, 3000, 60.0)
    reproduce.main(["--protocol", "mnist-accuracy", "--quick", "--collect-only", "--seeds", "0",
                    "--runs-dir", str(runs), "--results-dir", str(results)])
    # the cascadevae folder is gone (another machine); jointvae runs now
    os.rename(reproduce.run_dir(str(runs), "mnist-accuracy", True, "cascadevae", 0), tmp_path / "moved")
    _fake_run(reproduce.run_dir(str(runs), "mnist-accuracy", True, "jointvae", 0),
              {"accuracy_hungarian": 0.9, "accuracy_majority": 0.91}, 15000, 60.0)
    reproduce.main(["--protocol", "mnist-accuracy", "--quick", "--collect-only", "--seeds", "0",
                    "--arms", "jointvae", "--runs-dir", str(runs), "--results-dir", str(results)])
    rows = _rows(results / "mnist-accuracy-quick.csv")
    assert rows[("jointvae", "accuracy_hungarian (%)")]["ours"] == "90.00"
    assert rows[("cascadevae", "accuracy_hungarian (%)")]["ours"] == "40.00"
    assert [k[0] for k in rows] == ["jointvae", "jointvae", "cascadevae", "cascadevae"]  # protocol order
    # an arm with neither a run folder nor a committed row is still listed, as "not run"
    os.remove(results / "mnist-accuracy-quick.csv")
    reproduce.main(["--protocol", "mnist-accuracy", "--quick", "--collect-only", "--seeds", "0",
                    "--arms", "jointvae", "--runs-dir", str(runs), "--results-dir", str(results)])
    assert _rows(results / "mnist-accuracy-quick.csv")[("cascadevae", "accuracy_hungarian (%)")]["ours"] == "not run"


def test_dry_run_writes_nothing(tmp_path, capsys):
    runs, results = tmp_path / "runs", tmp_path / "results"
    reproduce.main(["--protocol", "all", "--quick", "--dry-run", "--seeds", "0",
                    "--runs-dir", str(runs), "--results-dir", str(results)])
    out = capsys.readouterr().out
    assert out.count("python ") == len(ARMS)
    assert "--iterations 15000" in out and "--seed 0" in out
    assert not runs.exists() and not results.exists()


TINY = ["--iterations", "40", "--batch-size", "16", "--log-every", "5", "--save-every", "1000",
        "--eval-samples", "300", "--metric-votes", "10", "--decomp-samples", "50", "--device", "cpu"]


def test_submitit_local_runs_a_tiny_protocol(tmp_path):
    """Two seeds as two jobs through `--launcher submitit --cluster local`, then the table."""
    pytest.importorskip("submitit")
    runs_dir, results = str(tmp_path / "runs"), str(tmp_path / "results")
    reproduce.main(["--protocol", "dsprites-mig", "--quick", "--arms", "btcvae", "--seeds", "0", "1",
                    "--launcher", "submitit", "--cluster", "local", "--timeout-min", "10",
                    "--runs-dir", runs_dir, "--results-dir", results, "--threads", "1", "--"] + TINY)
    rows = _rows(os.path.join(results, "dsprites-mig-quick.csv"))
    row = rows[("btcvae", "mig")]
    assert row["seeds"] == "2/2" and row["iterations"] == "40" and row["ours"] != "not run"
    jobs = [d for d in os.listdir(os.path.join(runs_dir, "submitit")) if d.isdigit()]
    assert len(jobs) == 2                                                    # one job per run
    for seed in (0, 1):
        m = json.load(open(os.path.join(runs_dir, "dsprites-mig-quick", f"btcvae-s{seed}", "metrics.json")))
        assert m["step"] == 40


def test_submitit_checkpoint_requeues_and_continues_exactly(tmp_path):
    """What submitit does on a time limit or pre-emption: call the job's `checkpoint` while
    it runs (the script saves at its next update and exits), pickle the returned delayed
    submission, and run it again. The result equals one uninterrupted run."""
    pytest.importorskip("submitit")
    import threading
    import time

    import cloudpickle
    import torch

    out = str(tmp_path / "run")
    cmd = [sys.executable, os.path.join(ROOT, "btcvae.py"), "--dataset", "shapes", "--seed", "0",
           "--no-progress", "--no-eval", "--out", out] + TINY
    job, results = reproduce.SubmititRun(), []
    worker = threading.Thread(target=lambda: results.append(job(cmd, out, 1)))
    worker.start()
    log, deadline = os.path.join(out, "log.csv"), time.time() + 120
    while time.time() < deadline and not (os.path.exists(log) and len(open(log).read().splitlines()) >= 2):
        time.sleep(0.1)
    delayed = cloudpickle.loads(cloudpickle.dumps(job.checkpoint(cmd, out, 1)))
    worker.join()
    step = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)["step"]
    assert 5 <= step < 40 and results == [None]                          # paused, not finished
    assert "SIGUSR1 received at step" in open(os.path.join(out, "stdout.log")).read()
    delayed.function(*delayed.args, **delayed.kwargs)                   # the requeued job
    assert "--resume" in json.load(open(os.path.join(out, "reproduce.json")))["command"]
    straight = str(tmp_path / "straight")
    # The same way the job ran it (a process with 1 thread): thread counts change float sums.
    rc, _ = reproduce.execute(cmd[:cmd.index("--out")] + ["--out", straight] + TINY, straight, 1)
    assert rc == 0
    a = torch.load(os.path.join(straight, "checkpoint.pt"), weights_only=True)
    b = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    assert a["step"] == b["step"] == 40
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
