"""benchmarks/reproduce.py: every protocol's commands are valid configurations of the
method scripts, the table is computed from run folders only, and a partial re-run keeps
the other arms' committed rows."""

import csv
import importlib.util
import json
import os
import shutil
import sys

import pytest
import torch

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
    if quick and spec_["arms"][arm]["quick"] is None:
        with pytest.raises(ValueError, match="no --quick variant"):
            reproduce.command(spec_, arm, 3, str(tmp_path / "run"), quick, "data", "cpu", [])
        return
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
    elif spec_["arms"][arm].get("fraction"):
        # a stated fraction of the paper protocol: its length and every schedule defined in
        # updates are the preset's times that fraction; nothing else is overridden
        num, den = spec_["arms"][arm]["fraction"]
        width = {"--iterations": 1, "--r": 1, "--t-d": 1, "--c-cont": 3, "--c-disc": 3}
        args, base = list(spec_["arms"][arm]["args"]), []
        while args:                           # the arm's flags without its length and schedules
            flag = args.pop(0)
            if flag in width:
                del args[:width[flag]]
            else:
                base.append(flag)
        preset = module.make_config(base)     # the preset with the arm's objective (--beta-vae 4)
        n = {"shapes": 737280}[cfg["dataset"]]
        full_iters = preset["iterations"] or preset["epochs"] * (n // preset["batch_size"])
        assert cfg["iterations"] * den == full_iters * num
        scaled = {"c_cont": 2, "c_disc": 2, "r": None, "t_d": None}
        for key, at in scaled.items():
            if key in preset:
                want = (preset[key][at] if at is not None else preset[key]) * num / den
                got = cfg[key][at] if at is not None else cfg[key]
                assert got == pytest.approx(want), key
                if at is not None:
                    assert cfg[key][:at] == preset[key][:at], key     # the ramp's end values are the paper's
        same = {"lr", "batch_size", "beta_h", "beta_l", "lam", "cont", "disc", "beta", "beta_vae", "gamma",
                "estimator", "arch", "precision"} & set(preset)
        assert {k: cfg[k] for k in same} == {k: preset[k] for k in same}
        assert spec_["arms"][arm]["schedules"].startswith("scaled") == any(k in preset for k in scaled)
    else:
        # the paper protocol is the script's own per-dataset preset: no training flag
        # (length, optimiser, schedules, latent sizes) is overridden
        preset = module.make_config(["--dataset", cfg["dataset"]])
        keys = {"iterations", "epochs", "lr", "batch_size", "c_cont", "c_disc", "r", "t_d",
                "beta_h", "beta_l", "lam", "cont", "disc", "m", "S"} & set(preset)
        assert len(keys) >= 5 and {k: cfg[k] for k in keys} == {k: preset[k] for k in keys}


def _fake_run(folder, metrics, iterations, wall, dataset="mnist", seed=0):
    """A finished run folder as the scripts leave it, with a small real checkpoint."""
    os.makedirs(folder)
    torch.save(dict(model={"w": torch.linspace(-1, 1, 6)}, config={"dataset": dataset, "seed": seed},
                    step=iterations, method=None), os.path.join(folder, "checkpoint.pt"))
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


def test_best_of_10k_column_applies_the_authors_rule_and_survives_release(tmp_path):
    runs, results, weights = tmp_path / "runs", tmp_path / "results", tmp_path / "weights"
    evals = {0: [(5000, 0.9), (10000, 0.7), (20000, 0.8), (25000, 0.75)], 1: [(10000, 0.6), (20000, 0.65)]}
    for seed, last in [(0, 0.75), (1, 0.65)]:
        out = reproduce.run_dir(str(runs), "mnist-accuracy", False, "cascadevae", seed)
        _fake_run(out, {"accuracy_hungarian": last, "accuracy_majority": last}, 25000, 60.0, seed=seed)
        with open(os.path.join(out, "evals.csv"), "w") as f:
            f.write("step,accuracy_hungarian,accuracy_majority\n")
            f.writelines(f"{step},{acc},{acc}\n" for step, acc in evals[seed])
    argv = ["--protocol", "mnist-accuracy", "--arms", "cascadevae", "--seeds", "0", "1", "--runs-dir", str(runs),
            "--results-dir", str(results), "--weights-dir", str(weights)]
    reproduce.main(argv + ["--collect-only"])
    r = _rows(results / "mnist-accuracy.csv")[("cascadevae", "accuracy_hungarian (%)")]
    # 5,000 is no 10k checkpoint: seed 0's best is 80.00 at 20,000, not 90.
    assert r["ours"] == "70.00 +- 7.07"
    assert r["best_of_10k"] == "72.50 +- 10.61 (s0 80.00 at 20,000; s1 65.00 at 20,000)"
    assert "authors' selection rule" in (results / "mnist-accuracy.md").read_text()
    # Released (run folders removed): evals.csv travels with the weights and the column stays.
    for seed in (0, 1):
        out = reproduce.run_dir(str(runs), "mnist-accuracy", False, "cascadevae", seed)
        path, entry = reproduce.releaser.release(out, "cascadevae", str(weights), protocol="mnist-accuracy",
                                                 run=f"mnist-accuracy/cascadevae-s{seed}")
        assert entry["evals"] == os.path.join("evals", "mnist-accuracy", f"cascadevae-s{seed}", "evals.csv")
        shutil.rmtree(out)
    reproduce.main(argv + ["--collect-only"])
    assert _rows(results / "mnist-accuracy.csv")[("cascadevae", "accuracy_hungarian (%)")]["best_of_10k"] == \
        r["best_of_10k"]


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
    quick = [(p, a) for p, a in ARMS if reproduce.PROTOCOLS[p]["arms"][a]["quick"] is not None]
    assert out.count("python ") == len(quick) and len(quick) < len(ARMS)    # shapes-models has no --quick
    assert out.count("no --quick variant defined, skipped") == len(ARMS) - len(quick)
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


# ---------------------------------------------------------------------------
# Driven as a user would: `python benchmarks/reproduce.py ...` in a subprocess
# ---------------------------------------------------------------------------

import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

SCRIPT = os.path.join(ROOT, "benchmarks", "reproduce.py")
# A btcvae run of a few updates, no evaluation: seconds on a busy 2-core machine.
FAST = ["--batch-size", "16", "--log-every", "5", "--save-every", "100000", "--no-eval", "--device", "cpu"]
MIG = ["--protocol", "dsprites-mig", "--quick", "--arms", "btcvae", "--threads", "1"]


def _cli(args, timeout=300, env=None):
    return subprocess.run([sys.executable, SCRIPT] + args, capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env=env)


def _last(text):
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


def _dirs(tmp_path):
    return ["--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results")]


@pytest.mark.parametrize("flags,start", [
    (["--seeds", "-1"], "--seeds -1: seeds are integers >= 0."),
    (["--time-budget", "0"], "--time-budget 0: give the minutes"),
    (["--time-budget", "nan"], "--time-budget nan: give the minutes"),
    (["--timeout-min", "0"], "--timeout-min 0: give the job time limit"),
    (["--jobs", "0"], "--jobs 0: give the number of runs"),
])
def test_bad_flags_are_one_sentence_and_exit_2(flags, start, tmp_path):
    r = _cli(MIG + _dirs(tmp_path) + flags)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]                  # one line, no traceback
    assert r.stderr.startswith("reproduce.py: error: " + start)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


def _no_slurm_env():
    if any(os.access(os.path.join(d, "sbatch"), os.X_OK) for d in os.environ.get("PATH", "").split(os.pathsep)):
        pytest.skip("this machine has SLURM")
    return {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}


def test_submitit_without_slurm_runs_locally_or_says_so(tmp_path):
    env = _no_slurm_env()
    r = _cli(MIG + _dirs(tmp_path) + ["--seeds", "0", "--launcher", "submitit", "--dry-run"], env=env)
    assert r.returncode == 0 and "Traceback" not in r.stderr
    assert "the jobs run on this machine (--cluster local)" in r.stdout.splitlines()[0]
    assert "--seed 0" in r.stdout
    r = _cli(MIG + _dirs(tmp_path) + ["--seeds", "0", "--launcher", "submitit", "--cluster", "slurm"], env=env)
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith("reproduce.py: error: --cluster slurm: there is no SLURM here")
    assert not (tmp_path / "runs").exists()


def test_failed_run_exits_1_says_why_and_a_retry_keeps_its_own_log(tmp_path):
    out = reproduce.run_dir(str(tmp_path / "runs"), "dsprites-mig", True, "btcvae", 0)
    csv_path = tmp_path / "results" / "dsprites-mig-quick.csv"
    why = "btcvae.py: error: --iterations must be >= 0."
    r = _cli(MIG + _dirs(tmp_path) + ["--seeds", "0", "--"] + FAST + ["--iterations", "-3"])
    assert r.returncode == 1 and "Traceback" not in r.stdout + r.stderr
    assert f"FAILED (exit 2: {why[:-1]}; see {out}/stdout.log)" in r.stdout
    assert _last(r.stderr) == "reproduce.py: 1 run(s) failed (listed above and in the tables' `failed` column)."
    assert f"FAILED: {out}: exit 2: {why}" in r.stderr
    rows = _rows(csv_path)
    assert rows[("btcvae", "mig")]["failed"] == f"s0: {out}: exit 2: {why}"
    assert rows[("btcvae", "mig")]["ours"] == "not run" and rows[("betavae", "mig")]["failed"] == "-"
    record = json.load(open(os.path.join(out, "reproduce.json")))
    assert record["returncode"] == 2 and record["slices"][-1]["error"] == why
    assert _last(open(os.path.join(out, "stdout.log")).read()) == why
    # the failure stays on record: the table alone says so, and the exit status too
    r = _cli(MIG + _dirs(tmp_path) + ["--seeds", "0", "--collect-only"])
    assert r.returncode == 1 and _rows(csv_path)[("btcvae", "mig")]["failed"] == f"s0: {out}: exit 2: {why}"

    # The retry starts afresh with --overwrite (the failed start left no checkpoint), which
    # removes the folder's stdout.log: the retry's own output must still be in it.
    r = _cli(MIG + _dirs(tmp_path) + ["--seeds", "0", "--"] + FAST + ["--iterations", "6"])
    assert r.returncode == 0, r.stderr
    assert "--overwrite" in r.stdout and f"trained, not evaluated (no metrics.json): {out}" in r.stdout
    log = open(os.path.join(out, "stdout.log")).read()
    assert log.startswith("config:") and "updates in all" in log   # printed before and after the overwrite
    assert why not in log                                          # the old run's log went with it
    assert torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)["step"] == 6
    record = json.load(open(os.path.join(out, "reproduce.json")))
    assert [s["returncode"] for s in record["slices"]] == [0] and "--overwrite" in record["command"]
    assert _rows(csv_path)[("btcvae", "mig")]["failed"] == "-"


def _children(pid):
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(c) for c in f.read().split()]
    return found


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _start_and_signal(tmp_path, seeds, sig):
    """reproduce.py training `seeds` (long runs) in parallel; `sig` once every run has logged."""
    if not os.path.isdir("/proc/self/task"):
        pytest.skip("needs /proc")
    args = MIG + _dirs(tmp_path) + ["--seeds"] + [str(s) for s in seeds] + ["--jobs", str(len(seeds)), "--"] \
        + FAST + ["--iterations", "100000"]
    proc = subprocess.Popen([sys.executable, SCRIPT] + args, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    outs = [reproduce.run_dir(str(tmp_path / "runs"), "dsprites-mig", True, "btcvae", s) for s in seeds]
    deadline = time.time() + 240
    while time.time() < deadline and not all(
            os.path.exists(os.path.join(o, "log.csv")) and len(open(os.path.join(o, "log.csv")).readlines()) >= 2
            for o in outs):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    children = _children(proc.pid)
    assert len(children) == len(seeds)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=240)
    return proc.returncode, stdout, stderr, outs, children, args


def test_sigterm_checkpoints_the_runs_records_them_and_the_same_command_continues(tmp_path):
    rc, stdout, stderr, outs, children, args = _start_and_signal(tmp_path, [0, 1], signal.SIGTERM)
    assert rc == 128 + signal.SIGTERM
    assert not any(_alive(c) for c in children)                       # no orphaned run
    assert _last(stderr).startswith("reproduce.py: stopped by SIGTERM: the runs that were training saved a "
                                    "checkpoint (recorded in their reproduce.json); continue them with the same "
                                    "command: python benchmarks/reproduce.py --protocol dsprites-mig")
    assert "Traceback" not in stdout + stderr
    steps = []
    for out in outs:
        step = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)["step"]
        assert 5 <= step < 100000
        assert f"SIGTERM received at step {step} of 100000; checkpoint saved" in open(os.path.join(out, "stdout.log")).read()
        record = json.load(open(os.path.join(out, "reproduce.json")))
        assert record["returncode"] == 0 and len(record["slices"]) == 1
        assert record["slices"][0]["stopped_by"] == "SIGTERM" and record["slices"][0]["wall_seconds"] > 0
        assert f"stopped by SIGTERM with a checkpoint: {out}" in stdout
        steps.append(step)
    assert not (tmp_path / "results").exists()                      # stopped before the tables

    # A torn reproduce.json (a crash mid-write) is said before the slice trains, and the
    # continuation (paused by its time budget: not a failure) goes on.
    out = outs[0]
    torn = open(os.path.join(out, "reproduce.json"), "rb").read()[:40]
    with open(os.path.join(out, "reproduce.json"), "wb") as f:
        f.write(torn)
    r = _cli(MIG + _dirs(tmp_path) + ["--seeds", "0", "--time-budget", "0.005", "--"] + FAST
             + ["--iterations", "100000"])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    warn = next(i for i, ln in enumerate(lines) if ln.startswith("reproduce.py: warning: "))
    echo = next(i for i, ln in enumerate(lines) if ln.startswith("python btcvae.py"))
    assert warn < echo and "--resume" in lines[echo]
    assert f"{out}/reproduce.json is not valid JSON" in lines[warn]
    assert f"paused at its time budget (run the same command to continue): {out}" in r.stdout
    assert open(os.path.join(out, "reproduce.json.corrupt"), "rb").read() == torn
    record = json.load(open(os.path.join(out, "reproduce.json")))
    assert [s["returncode"] for s in record["slices"]] == [0] and "not valid JSON" in record["note"]
    assert torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)["step"] > steps[0]
    assert _rows(tmp_path / "results" / "dsprites-mig-quick.csv")[("btcvae", "mig")]["failed"] == "-"


def test_sigint_is_forwarded_as_sigterm(tmp_path):
    rc, stdout, stderr, outs, children, _ = _start_and_signal(tmp_path, [0], signal.SIGINT)
    assert rc == 128 + signal.SIGINT and not any(_alive(c) for c in children)
    assert _last(stderr).startswith("reproduce.py: stopped by SIGINT:") and "Traceback" not in stdout + stderr
    step = torch.load(os.path.join(outs[0], "checkpoint.pt"), weights_only=True)["step"]
    assert f"SIGTERM received at step {step}" in open(os.path.join(outs[0], "stdout.log")).read()
    assert json.load(open(os.path.join(outs[0], "reproduce.json")))["slices"][0]["stopped_by"] == "SIGINT"


def test_a_run_folder_in_use_is_neither_started_nor_overwritten(tmp_path):
    out = reproduce.run_dir(str(tmp_path / "runs"), "dsprites-mig", True, "btcvae", 0)
    os.makedirs(out)
    files = {"config.json": '{"seed": 0}', "stdout.log": "another process writes here\n",
             ".lock": json.dumps({"pid": os.getpid(), "host": socket.gethostname()})}
    for name, text in files.items():
        with open(os.path.join(out, name), "w") as f:
            f.write(text)
    r = _cli(MIG + _dirs(tmp_path) + ["--seeds", "0", "--"] + FAST + ["--iterations", "6"])
    said = f"{out} is in use by process {os.getpid()}; skipped, neither started nor overwritten"
    assert r.returncode == 1 and f"FAILED: {said}" in r.stdout and "Traceback" not in r.stderr
    assert "python btcvae.py" not in r.stdout                         # no command for it at all
    assert {n: open(os.path.join(out, n)).read() for n in os.listdir(out)} == files   # untouched
    assert _rows(tmp_path / "results" / "dsprites-mig-quick.csv")[("btcvae", "mig")]["failed"].startswith(f"s0: {said}")
    # The helper: a lock whose process has ended frees the folder; one that cannot be read does not.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open(os.path.join(out, ".lock"), "w") as f:
        json.dump({"pid": dead.pid, "host": socket.gethostname()}, f)
    assert reproduce.in_use_by(out) is None
    with open(os.path.join(out, ".lock"), "w") as f:
        f.write('{"pid": ')
    assert "is unreadable" in reproduce.in_use_by(out)
    os.remove(os.path.join(out, ".lock"))
    assert reproduce.in_use_by(out) is None


def test_corrupt_run_folders_are_failed_runs_in_the_table_and_the_exit_status(tmp_path):
    runs_dir, weights = tmp_path / "runs", tmp_path / "results" / "weights"
    folders = {}
    for seed in range(4):
        folders[seed] = reproduce.run_dir(str(runs_dir), "fashion-accuracy", True, "jointvae", seed)
        _fake_run(folders[seed], {"accuracy_hungarian": 0.5 + seed / 10, "accuracy_majority": None}, 15000, 60.0,
                  dataset="fashion-mnist", seed=seed)
    with open(os.path.join(folders[1], "metrics.json"), "w") as f:
        f.write('{"accuracy_hungarian": 0.6, "acc')                     # torn
    with open(os.path.join(folders[2], "config.json"), "w") as f:
        f.write("\x00\x00\x00")
    os.remove(os.path.join(folders[3], "checkpoint.pt"))
    args = ["--protocol", "fashion-accuracy", "--quick", "--arms", "jointvae", "--seeds", "0", "1", "2", "3"] \
        + _dirs(tmp_path)
    r = _cli(args + ["--collect-only"])
    assert r.returncode == 1 and "Traceback" not in r.stdout + r.stderr
    assert _last(r.stderr) == "reproduce.py: 3 run(s) failed (listed above and in the tables' `failed` column)."
    row = _rows(tmp_path / "results" / "fashion-accuracy-quick.csv")[("jointvae", "accuracy_hungarian (%)")]
    assert row["ours"] == "50.00" and row["seeds"] == "1/4"
    failed = row["failed"].split("; s")
    assert failed[0].startswith(f"s1: {folders[1]}/metrics.json is not valid JSON (")
    assert failed[1].startswith(f"2: {folders[2]}/config.json is not valid JSON (")
    assert failed[2].startswith(f"3: {folders[3]} has metrics.json but no checkpoint.pt")
    # --release: the good run is released, the others are not, and say why
    r = _cli(args + ["--collect-only", "--release"])
    assert r.returncode == 1 and "Traceback" not in r.stdout + r.stderr
    manifest = json.load(open(weights / "manifest.json"))["weights"]
    assert [(e["file"], e["run"]) for e in manifest] == [("jointvae-fashion-mnist-s0.pt", "fashion-accuracy-quick/jointvae-s0")]
    assert manifest[0]["metrics"]["accuracy_hungarian"] == 0.5 and manifest[0]["updates"] == 15000
    assert sorted(os.listdir(weights)) == ["jointvae-fashion-mnist-s0.pt", "manifest.json"]
    # a manifest entry without `file`: one sentence, nothing released
    with open(weights / "manifest.json", "w") as f:
        json.dump({"weights": [{"name": "jointvae", "dataset": "mnist", "seed": 0}]}, f)
    r = _cli(["--protocol", "fashion-accuracy", "--quick", "--arms", "jointvae", "--seeds", "0"] + _dirs(tmp_path)
             + ["--collect-only", "--release"])
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"FAILED: {folders[0]}: not released: {weights}/manifest.json: entry 0 of `weights` has no `file` field" \
        in r.stderr


def test_shapes_models_state_their_fraction_in_the_table_the_manifest_and_the_readme(tmp_path):
    runs_dir, weights = tmp_path / "runs", tmp_path / "results" / "weights"
    for arm, updates in (("jointvae", 57600), ("betavae", 4000)):
        _fake_run(reproduce.run_dir(str(runs_dir), "shapes-models", False, arm, 0),
                  {"factor_vae_score": 0.7, "accuracy_hungarian": 0.4, "mig": 0.1, "mig_5factors": 0.1}, updates,
                  3600.0, dataset="shapes")
    reproduce.main(["--protocol", "shapes-models", "--arms", "jointvae", "betavae", "--seeds", "0", "--collect-only",
                    "--release", "--weights-dir", str(weights)] + _dirs(tmp_path))
    md = open(tmp_path / "results" / "shapes-models.md").read()
    assert "- jointvae: 1/6 of its paper protocol; schedules scaled by 1/6: C_z -> 40" in md
    assert "- betavae: 2/9 of its paper protocol; schedules none to scale" in md
    entries = {e["file"]: e for e in reproduce.releaser.read_manifest(str(weights))}
    assert set(entries) == {"jointvae-shapes-s0.pt", "betavae-shapes-s0.pt"}
    assert (entries["jointvae-shapes-s0.pt"]["protocol_fraction"], entries["jointvae-shapes-s0.pt"]["schedules_scaled"]) \
        == ("1/6", True)
    assert (entries["betavae-shapes-s0.pt"]["protocol_fraction"], entries["betavae-shapes-s0.pt"]["schedules_scaled"]) \
        == ("2/9", False)
    table = reproduce.releaser.readme_table(list(entries.values()))
    assert "| 0 | 57,600 (1/6 of the paper protocol, schedules scaled) |" in table
    assert "| 0 | 4,000 (2/9 of the paper protocol) |" in table
    assert "| beta-VAE | shapes" in table and "`python btcvae.py --dataset shapes --beta-vae 4 --seed 0 --pretrained`" in table


def test_the_device_comes_from_the_banner_not_the_printed_config(tmp_path):
    out = reproduce.run_dir(str(tmp_path / "runs"), "mnist-accuracy", False, "cascadevae", 0)
    _fake_run(out, {"accuracy_hungarian": 0.8}, 120000, 60.0)
    with open(os.path.join(out, "metrics.json"), "w") as f:                 # as the scripts write it: no device
        json.dump({"accuracy_hungarian": 0.8}, f)
    with open(os.path.join(out, "stdout.log"), "w") as f:
        f.write("  device            auto\n"
                "CascadeVAE (eq. 5-6) on mnist (10000 images), 120000 updates, 635605 parameters, device cpu, run folder x\n"
                "  device            auto\n"
                "CascadeVAE (eq. 5-6) on mnist (10000 images), 120000 updates, 635605 parameters, device cuda:0\n")
    assert reproduce.read_run(out)["_device"] == "cuda:0"                   # the last slice's
    with open(os.path.join(out, "stdout.log"), "a") as f:                   # btcvae.py names its architecture
        f.write("beta-TCVAE on shapes, 4000 updates, 123 parameters (mlp), device cpu, run folder x\n")
    assert reproduce.read_run(out)["_device"] == "cpu"
