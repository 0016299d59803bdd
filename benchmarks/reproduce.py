"""Reproduce the papers' tables with this repository's scripts.

    python benchmarks/reproduce.py --protocol fashion-accuracy            # paper presets, 3 seeds
    python benchmarks/reproduce.py --protocol dsprites-factorvae --quick  # CPU-sized variant
    python benchmarks/reproduce.py --protocol all --quick --collect-only  # tables from finished runs
    python benchmarks/reproduce.py --list

A protocol is a set of arms (method script + flags) x seeds. Each run writes its usual
folder under --runs-dir/<protocol>[-quick]/<arm>-s<seed>/ (config.json, log.csv,
metrics.json, figures); a folder whose metrics.json already exists is reused, so an
interrupted protocol continues where it stopped and long runs can be started by hand
with the printed command. The collected numbers go to results/<protocol>[-quick].csv
and results/<protocol>[-quick].md: metric, the paper's value with its table/figure,
ours as mean +- std over seeds, the number of seeds, iterations, device and wall time
per run. A cell with no finished run says "not run"; a paper value is never copied
into our column.

`--quick` protocols shorten training (and compress the schedules that are defined in
iterations, proportionally) so that a 2-core CPU finishes them in minutes: they test
the pipeline and show the trend; they are NOT the papers' protocols, and the tables
say so. Quick settings: JointVAE on MNIST and Fashion-MNIST runs the App. C schedules
unchanged for 15,000 updates (C_c reaches its log 10 clip at update ~11,500, as in the
paper): compressing them fails, because a C_c that reaches log K within a few hundred
updates is met by a constant one-hot code (KL(q(c|x)||U) = log K for every x while
I(x; c) = 0; we measured exactly chance accuracy that way). On shapes JointVAE runs 6000
updates with C_z, C_c reaching their maxima at the end of the run; CascadeVAE runs 15,000
updates on MNIST (as JointVAE), 3000 on Fashion-MNIST and 6000 on shapes, with r = 1250 /
250 / 400 and t_d = 0 / 0 / 2000 (supp. B's ratios r/T, t_d/T); beta-TCVAE
and beta-VAE 2000 updates at batch 128 (the paper: 2048). Shapes runs evaluate on a
random 50,000-image subset (the FactorVAE votes are still drawn from the full grid).

`shapes-models` trains the `shapes` models released for the figures and the notebooks: one
seed of each method at a stated `fraction` of its paper protocol (about 5 single-thread CPU
hours each), with the schedules defined in updates scaled by that fraction; the table and
each manifest entry (`protocol_fraction`, `schedules_scaled`, `schedules`) say so.

Bookkeeping. Each run's output goes to <run>/stdout.log (kept when a retry's --overwrite
clears the folder) and each slice of it to <run>/reproduce.json (written atomically: wall
time, exit status, the last line a failed run printed, the signal that stopped it).
Exit status: 0; 1 when a run failed (the printout and the tables' `failed` column say
which and why: the last line it printed, or the corrupt file and field); 2 for a bad flag;
128 + N after signal N. A run paused at --time-budget is not a failure. SIGTERM, SIGINT
(Ctrl-C) or SIGHUP to reproduce.py is passed on to the running runs as SIGTERM: they save
a checkpoint at their next update and exit, the slice is recorded, and the same command
continues them. A run folder in use by another process (<run>/.lock of a live process) is
skipped, never started in or overwritten. `--release` writes through benchmarks/release.py.
"""

import argparse
import csv
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _import_release(name="release"):
    """benchmarks/release.py (weights + manifest, atomic files) or another benchmarks/ module,
    imported by its path: putting benchmarks/ on sys.path would let benchmarks/metrics.py
    shadow the repository's metrics.py."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), name + ".py")
    module = sys.modules.get(name)
    if module is not None and os.path.abspath(getattr(module, "__file__", "") or "") == path:
        return module
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


releaser = _import_release()
ReleaseError = releaser.ReleaseError
trajectory = _import_release("trajectory")

# Paper values: (value in %, std or None, source). Percent for accuracies and the
# FactorVAE score, as the papers print them; MIG is a fraction in [0, 1].
PROTOCOLS = {
    "mnist-accuracy": dict(
        doc="Unsupervised classification accuracy of the discrete code on MNIST (S = 10).",
        data_note="Offline, only the MNIST test split (10,000 images) is available, so these runs "
                  "train and evaluate on it (--train-split test); the papers train on the train split.",
        arms={
            "jointvae": dict(script="jointvae.py", args=["--dataset", "mnist", "--train-split", "test"],
                             quick=["--iterations", "15000"]),
            "cascadevae": dict(script="cascadevae.py", args=["--dataset", "mnist", "--train-split", "test"],
                               quick=["--iterations", "15000", "--r", "1250"]),
        },
        metrics={
            "accuracy_hungarian": {
                "jointvae": [(88.7, None, "Dupont 2018 sec. 4.3 (one model)"),
                             (68.57, 9.19, "Jeong & Song 2019 Table 3, m=10")],
                "cascadevae": [(81.41, 9.54, "Jeong & Song 2019 Table 3, m=10")],
            },
            "accuracy_majority": {},
        },
    ),
    "fashion-accuracy": dict(
        doc="Unsupervised classification accuracy of the discrete code on Fashion-MNIST (S = 10).",
        data_note="Full Fashion-MNIST: train on the 60,000 train images, evaluate on the 10,000 test images.",
        arms={
            "jointvae": dict(script="jointvae.py", args=["--dataset", "fashion-mnist"],
                             quick=["--iterations", "15000"]),
            "cascadevae": dict(script="cascadevae.py", args=["--dataset", "fashion-mnist"],
                               quick=["--iterations", "3000", "--r", "250"]),
        },
        metrics={
            "accuracy_hungarian": {
                "jointvae": [(50.99, 2.5, "Jeong & Song 2019 Table 4, m=10")],
                "cascadevae": [(56.01, 3.33, "Jeong & Song 2019 Table 4, m=10")],
            },
            "accuracy_majority": {},
        },
    ),
    "dsprites-factorvae": dict(
        doc="FactorVAE disentanglement score (Jeong & Song supp. C) and shape accuracy on dSprites.",
        data_note="Offline the official dSprites file is not available: runs use `shapes`, the procedural "
                  "dSprites of data.py (same factor grid, our renderer). Pass --dataset dsprites with the "
                  "official file for the paper's data.",
        arms={
            "jointvae": dict(script="jointvae.py", args=["--dataset", "shapes"],
                             quick=["--iterations", "6000", "--c-cont", "0", "40", "6000",
                                    "--c-disc", "0", "1.1", "6000", "--eval-samples", "50000"]),
            "cascadevae": dict(script="cascadevae.py", args=["--dataset", "shapes"],
                               quick=["--iterations", "6000", "--r", "400", "--t-d", "2000",
                                      "--eval-samples", "50000"]),
        },
        metrics={
            "factor_vae_score": {
                "jointvae": [(74.51, 5.17, "Jeong & Song 2019 Table 1, m=6")],
                "cascadevae": [(90.49, 5.28, "Jeong & Song 2019 Table 1, m=6, beta_l=1")],
            },
            "accuracy_hungarian": {
                "jointvae": [(44.79, 3.88, "Jeong & Song 2019 Table 2 (shape), m=6")],
                "cascadevae": [(78.84, 15.65, "Jeong & Song 2019 Table 2 (shape), m=6")],
            },
            "mig": {},
        },
    ),
    "dsprites-mig": dict(
        doc="MIG of beta-TCVAE (beta = 6) vs beta-VAE (beta = 4) on dSprites (Chen et al. Fig. 3).",
        data_note="Offline runs use `shapes` (see dsprites-factorvae). Chen et al. report MIG over scale, "
                  "rotation, posX, posY (their Table 2), shape treated as noise: our `mig`.",
        arms={
            "btcvae": dict(script="btcvae.py", args=["--dataset", "shapes", "--beta", "6"],
                           quick=["--iterations", "2000", "--batch-size", "128", "--eval-samples", "50000"]),
            "betavae": dict(script="btcvae.py", args=["--dataset", "shapes", "--beta-vae", "4"],
                            quick=["--iterations", "2000", "--batch-size", "128", "--eval-samples", "50000"]),
        },
        metrics={
            "mig": {
                "btcvae": [(None, None, "Chen et al. 2018 Fig. 3 (box plot only; no number in the text)")],
                "betavae": [(None, None, "Chen et al. 2018 Fig. 3 (box plot only; no number in the text)")],
            },
            "mig_5factors": {},
            "factor_vae_score": {},
        },
    ),
    # One seed of each method on `shapes` for the figures and the notebooks. Each arm runs a
    # stated `fraction` of its paper protocol (about 5 single-thread CPU hours, estimated from
    # the --quick runs' time per update) with the schedules defined in updates scaled by the
    # same fraction, so that they end where the paper's do, relative to the run.
    "shapes-models": dict(
        doc="The `shapes` models released for the figures and the notebooks: one seed of each method, each at "
            "a stated fraction of its paper protocol (NOT the full protocol; about 5 single-thread CPU hours each).",
        data_note="`shapes`, the procedural dSprites of data.py (see dsprites-factorvae); evaluation on the whole "
                  "737,280-image grid.",
        arms={
            "jointvae": dict(script="jointvae.py", quick=None, fraction=(1, 6),
                             args=["--dataset", "shapes", "--iterations", "57600",
                                   "--c-cont", "0", "40", "50000", "--c-disc", "0", "1.1", "50000"],
                             schedules="scaled by 1/6: C_z -> 40 and C_c -> 1.1 over 50,000 updates "
                                       "(App. C.5: 300,000)"),
            "cascadevae": dict(script="cascadevae.py", quick=None, fraction=(1, 10),
                               args=["--dataset", "shapes", "--iterations", "30000", "--r", "2000", "--t-d", "10000"],
                               schedules="scaled by 1/10: r = 2,000 and t_d = 10,000 (supp. B.1: 20,000 and 100,000)"),
            "btcvae": dict(script="btcvae.py", quick=None, fraction=(2, 9),
                           args=["--dataset", "shapes", "--beta", "6", "--iterations", "4000"],
                           schedules="none to scale (constant beta, alpha, gamma and learning rate)"),
            "betavae": dict(script="btcvae.py", quick=None, fraction=(2, 9),
                            args=["--dataset", "shapes", "--beta-vae", "4", "--iterations", "4000"],
                            schedules="none to scale (constant beta and learning rate)"),
        },
        metrics={
            "factor_vae_score": {
                "jointvae": [(74.51, 5.17, "Jeong & Song 2019 Table 1, m=6, full protocol")],
                "cascadevae": [(90.49, 5.28, "Jeong & Song 2019 Table 1, m=6, beta_l=1, full protocol")],
            },
            "accuracy_hungarian": {
                "jointvae": [(44.79, 3.88, "Jeong & Song 2019 Table 2 (shape), m=6, full protocol")],
                "cascadevae": [(78.84, 15.65, "Jeong & Song 2019 Table 2 (shape), m=6, full protocol")],
            },
            "mig": {},
            "mig_5factors": {},
        },
    ),
}


def fraction_fields(arm_spec):
    """The manifest fields of an arm run at a fraction of its paper protocol ({} for a full one)."""
    if not arm_spec.get("fraction"):
        return {}
    num, den = arm_spec["fraction"]
    return dict(protocol_fraction=f"{num}/{den}", schedules_scaled=arm_spec["schedules"].startswith("scaled"),
                schedules=arm_spec["schedules"])


PERCENT_METRICS = {"accuracy_hungarian", "accuracy_majority", "factor_vae_score"}


def run_dir(runs_dir, protocol, quick, arm, seed):
    return os.path.join(runs_dir, protocol + ("-quick" if quick else ""), f"{arm}-s{seed}")


def command(spec, arm, seed, out, quick, data_dir, device, extra, time_budget=None, fresh=False):
    """The script's command line for one run. A folder that holds an unfinished run
    (a checkpoint, no metrics.json) is continued exactly with --resume, the same flags.
    Callers check in_use_by(out) first: --overwrite is never given for a folder in use."""
    arm_spec = spec["arms"][arm]
    args = [sys.executable, os.path.join(ROOT, arm_spec["script"])] + list(arm_spec["args"])
    if quick:
        if arm_spec["quick"] is None:
            raise ValueError(f"arm {arm} has no --quick variant")
        args += list(arm_spec["quick"])
    args += ["--seed", str(seed), "--data-dir", data_dir, "--device", device, "--no-progress"]
    if fresh:
        args += ["--out", out]
    elif os.path.isfile(os.path.join(out, "checkpoint.pt")):
        args += ["--resume", out]
    elif os.path.isdir(out):
        args += ["--out", out, "--overwrite"]  # a failed start left no checkpoint: nothing to keep
    else:
        args += ["--out", out]
    if time_budget is not None:
        args += ["--time-budget", f"{time_budget:g}"]
    return args + list(extra)


# ---------------------------------------------------------------------------
# Run folders in use by another process
# ---------------------------------------------------------------------------

def in_use_by(out):
    """Who holds OUT/.lock, in words for a sentence ("process 123"), or None when the folder
    is free: no lock, or the lock of a process of this host that has ended. The lock is the
    one a script takes on its run folder (a file created with O_EXCL holding {"pid", "host"});
    this is the one place to change when that lock's format does."""
    path = os.path.join(out, ".lock")
    try:
        with open(path) as f:
            info = json.load(f)
        pid, host = int(info["pid"]), info.get("host")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return f"a process whose lock file {path} is unreadable (delete that file if no process uses the folder)"
    if host is not None and host != socket.gethostname():
        return f"process {pid} on {host}"
    if pid <= 0:
        return f"a process whose lock file {path} names no valid pid (delete that file if no process uses the folder)"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None                                          # a stale lock: its process has ended
    except PermissionError:
        pass                                                 # alive, another user's
    return f"process {pid}"


def in_use_message(out, who):
    return (f"{out} is in use by {who}; skipped, neither started nor overwritten "
            "(run the same command again once that process has ended).")


# ---------------------------------------------------------------------------
# One run (or one slice of it): the child, its log, reproduce.json, stop signals
# ---------------------------------------------------------------------------

class _Runtime:
    """This process's runs: `lock` guards `children` (the training processes running now) and
    `signal` (the stop signal received, if any); the signal handler takes it too. A submitit
    job (this module pickled by value) starts with a fresh one."""

    def __init__(self):
        self.lock, self.children, self.signal = threading.RLock(), set(), None

    def __reduce__(self):
        return _Runtime, ()


_RT = _Runtime()
STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, n))


def _on_stop_signal(signum, frame):
    """SIGTERM / SIGINT / SIGHUP to reproduce.py: pass SIGTERM to every running run (the
    scripts save a checkpoint at their next update and exit 0), start no new run."""
    with _RT.lock:
        first = _RT.signal is None
        if first:
            _RT.signal = signum
        running = [p for p in _RT.children if p.poll() is None]
        for proc in running:
            try:
                proc.send_signal(signal.SIGTERM)
            except OSError:
                pass
    if first:  # os.write: print() is not safe inside a signal handler
        os.write(2, (f"reproduce.py: {signal.Signals(signum).name} received; asking {len(running)} running "
                     "run(s) to save a checkpoint and stop, starting no new run.\n").encode())


class forwarding_stop_signals:
    """`with forwarding_stop_signals():` the run phase; the previous handlers come back after."""

    def __enter__(self):
        self.previous = {}
        with _RT.lock:
            _RT.signal = None
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self.previous[sig] = signal.signal(sig, _on_stop_signal)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False


def stop_signal():
    """The name of the stop signal received during the run phase, or None."""
    return None if _RT.signal is None else signal.Signals(_RT.signal).name


def read_slices(out):
    """The slices recorded in OUT/reproduce.json, and a one-sentence problem (or None) when
    the file is torn or corrupt (its slices are then not counted)."""
    path = os.path.join(out, "reproduce.json")
    if not os.path.isfile(path):
        return [], None
    try:
        slices = releaser.read_json(path).get("slices", [])
        if not isinstance(slices, list) or not all(isinstance(x, dict) for x in slices):
            raise ReleaseError(f"{path}: field `slices` is not a list of objects.")
        return slices, None
    except ReleaseError as err:
        return [], (f"{str(err).rstrip('.')}: the wall time of the run's earlier slices is not counted "
                    "(the file is kept as reproduce.json.corrupt when this slice is recorded).")


def _last_line(data):
    text = data.decode("utf-8", "replace").strip()
    return text.splitlines()[-1].strip()[:300] if text else ""


def _tee(pipe, log, path, last):
    """Copy the child's output into OUT/stdout.log and keep its last non-empty line. The
    child's --overwrite removes stdout.log with the old run's files: the log is then written
    again under its name, with what this slice wrote before, so a retry keeps its own log."""
    start = log.tell()

    def relinked(log, start):
        if os.fstat(log.fileno()).st_nlink > 0:
            return log, start
        log.seek(start)
        before = log.read()
        log.close()
        log = open(path, "a+b")
        start = log.tell()
        log.write(before)
        return log, start

    try:
        for line in iter(pipe.readline, b""):
            log, start = relinked(log, start)
            log.write(line)
            log.flush()
            if line.strip():
                last[0] = line
        log, start = relinked(log, start)
    except OSError:
        for _ in iter(pipe.readline, b""):  # a full disk: drain, so the child never blocks
            pass
    finally:
        try:
            log.close()
        except OSError:
            pass
        pipe.close()


def execute_run(cmd, out, threads, on_start=None, warn=True):
    """Run one training+evaluation (or one slice of it) with its output in OUT/stdout.log;
    record its wall time, exit status, the last line it printed when it failed, and the stop
    signal that ended it, in OUT/reproduce.json (slices of one run add up). Returns a dict:
    returncode (None: not started, a stop signal came first), wall, error, stopped_by."""
    path = os.path.join(out, "reproduce.json")
    slices, problem = read_slices(out) if "--resume" in cmd else ([], None)
    if problem and warn:
        print(f"reproduce.py: warning: {problem}", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    last = [b""]
    try:
        os.makedirs(out, exist_ok=True)
        # A fresh start (--overwrite) starts a fresh log; a resumed slice appends to its run's.
        log = open(os.path.join(out, "stdout.log"), "w+b" if "--overwrite" in cmd else "a+b")
    except OSError as err:
        return dict(returncode=126, wall=0.0, error=f"could not write {out}/stdout.log ({err.strerror or err})",
                    stopped_by=None, last_line="")
    t0 = time.time()
    with _RT.lock:
        if _RT.signal is not None:
            log.close()
            return dict(returncode=None, wall=0.0, error=None, stopped_by=stop_signal(), last_line="")
        try:
            # A session of its own: a Ctrl-C in the terminal reaches reproduce.py only, which
            # asks the run to checkpoint (SIGTERM) instead of killing it mid-update.
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
        except OSError as err:
            log.close()
            return dict(returncode=127, wall=0.0, error=f"could not start {cmd[0]} ({err.strerror or err})",
                        stopped_by=None, last_line="")
        _RT.children.add(proc)
    tee = threading.Thread(target=_tee, args=(proc.stdout, log, os.path.join(out, "stdout.log"), last), daemon=True)
    tee.start()
    try:
        if on_start is not None:
            on_start(proc)
        proc.wait()
    finally:
        with _RT.lock:
            _RT.children.discard(proc)
    tee.join()
    wall, rc = time.time() - t0, proc.returncode
    record = dict(wall_seconds=round(wall, 1), returncode=rc, git_commit=_git_commit())
    error = None
    if rc != 0:
        line = _last_line(last[0])
        if rc < 0:
            try:
                name = signal.Signals(-rc).name
            except ValueError:
                name = f"signal {-rc}"
            error = f"killed by {name}" + (f" (last line: {line})" if line else "")
        else:
            error = line or "it printed nothing"
        record["error"] = error
    stopped = stop_signal()
    if stopped is not None:
        record["stopped_by"] = stopped
    slices.append(record)
    state = dict(command=cmd, wall_seconds=round(sum(x.get("wall_seconds") or 0 for x in slices), 1),
                 returncode=rc, threads=threads, slices=slices)
    if problem:
        state["note"] = problem
        try:
            os.replace(path, path + ".corrupt")
        except OSError:
            pass
    try:
        releaser.write_json(path, state)
    except ReleaseError as err:
        print(f"reproduce.py: warning: {err}", flush=True)
    return dict(returncode=rc, wall=wall, error=error, stopped_by=stopped, last_line=_last_line(last[0]))


def execute(cmd, out, threads, on_start=None):
    """execute_run -> (exit status, wall seconds)."""
    res = execute_run(cmd, out, threads, on_start)
    return res["returncode"], res["wall"]


def _git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


# ---------------------------------------------------------------------------
# Reading run folders
# ---------------------------------------------------------------------------

def _released(out, weights_dir=releaser.WEIGHTS_DIR):
    """The manifest entry of a run whose folder was removed after its weights were released."""
    parent, leaf = os.path.split(os.path.normpath(out))
    run = os.path.join(os.path.basename(parent), leaf)
    for entry in releaser.read_manifest(weights_dir):
        if entry.get("run") == run:
            return entry
    return None


def read_run(out, weights_dir=releaser.WEIGHTS_DIR):
    """Metrics, iterations, device and wall time of one finished run folder (or None); a
    released run whose folder is gone is read from results/weights/manifest.json. A corrupt
    metrics.json / config.json / manifest, or metrics without checkpoint.pt: ReleaseError."""
    path = os.path.join(out, "metrics.json")
    if not os.path.isfile(path):
        entry = _released(out, weights_dir)
        if entry is None:
            return None
        manifest = os.path.join(weights_dir, "manifest.json")
        if not isinstance(entry.get("metrics"), dict):
            raise ReleaseError(f"{manifest}: {entry['file']} has no `metrics` object; fix that entry.")
        return dict(entry["metrics"], _iterations=entry.get("updates"), _device=entry.get("device"),
                    _wall=entry.get("wall_seconds"))
    m = releaser.read_json(path)
    if not os.path.isfile(os.path.join(out, "checkpoint.pt")):
        raise ReleaseError(f"{out} has metrics.json but no checkpoint.pt (field `model` of the run is missing); "
                           "restore checkpoint.pt or train the run again.")
    cfg = {}
    if os.path.isfile(os.path.join(out, "config.json")):
        cfg = releaser.read_json(os.path.join(out, "config.json"))
    wall = None
    if os.path.isfile(os.path.join(out, "reproduce.json")):
        try:  # a torn reproduce.json: the wall time from log.csv instead
            wall = releaser.read_json(os.path.join(out, "reproduce.json")).get("wall_seconds")
        except ReleaseError:
            pass
        wall = wall if isinstance(wall, (int, float)) and not isinstance(wall, bool) else None
    if wall is None and os.path.isfile(os.path.join(out, "log.csv")):
        # A run started by hand: training time from the log plus the evaluation time.
        try:
            with open(os.path.join(out, "log.csv"), newline="") as f:
                rows = csv.DictReader(line for line in f if not line.startswith("#"))
                wall = sum(float(r["seconds"]) for r in rows) + float(m.get("eval_seconds") or 0.0)
        except (OSError, ValueError, KeyError, TypeError):
            wall = None
    m["_iterations"] = cfg.get("iterations_total", m.get("step"))
    m["_device"] = m.get("device", cfg.get("device"))
    if m["_device"] in (None, "auto") and os.path.isfile(os.path.join(out, "stdout.log")):
        with open(os.path.join(out, "stdout.log"), errors="replace") as f:
            # The scripts' banner says "..., <P> parameters [(arch)], device <name>, run folder ..."; the
            # printed config's "device  auto" line is the flag, not the device. The last slice's.
            found = re.findall(r"parameters(?: \([^)]*\))?, device ([\w:.]+)", f.read())
        m["_device"] = found[-1] if found else m["_device"]
    m["_wall"] = wall
    return m


def read_evals(out, weights_dir=releaser.WEIGHTS_DIR):
    """The rows of a run's evals.csv: in its folder, or kept with its release
    (weights_dir/evals/<protocol>/<run>/evals.csv); [] without one."""
    for path in (os.path.join(out, "evals.csv"),
                 os.path.join(weights_dir, "evals", *os.path.normpath(out).split(os.sep)[-2:], "evals.csv")):
        if os.path.isfile(path):
            return trajectory.read_evals(path)
    return []


def run_status(out, weights_dir=releaser.WEIGHTS_DIR):
    """("done", metrics), ("failed", one sentence) or ("not run", None) for one run folder.
    A run whose last slice exited non-zero (not on a stop signal) has failed; a paused run
    (its time budget reached, exit 0) is not run yet, not failed."""
    try:
        m = read_run(out, weights_dir)
    except ReleaseError as err:
        return "failed", str(err)
    if m is not None:
        return "done", m
    slices, _ = read_slices(out)
    if slices and slices[-1].get("returncode") not in (0, None) and not slices[-1].get("stopped_by"):
        last = slices[-1]
        return "failed", f"{out}: exit {last['returncode']}: {last.get('error') or 'see its stdout.log'}"
    return "not run", None


def _fmt_ours(values, metric):
    vals = [v for v in values if v is not None]
    if not vals:
        return "not run"
    scale = 100.0 if metric in PERCENT_METRICS else 1.0
    vals = [scale * v for v in vals]
    mean = sum(vals) / len(vals)
    digits = 2 if scale == 100.0 else 3
    if len(vals) == 1:
        return f"{mean:.{digits}f}"
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    return f"{mean:.{digits}f} +- {std:.{digits}f}"


def _fmt_paper(entries):
    if not entries:
        return "-"
    parts = []
    for value, std, source in entries:
        if value is None:
            parts.append(source)
        else:
            parts.append(f"{value}" + (f" ({std})" if std is not None else "") + f" [{source}]")
    return "; ".join(parts)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def collect(protocol, quick, seeds, runs_dir, arms=None, results_dir=None, weights_dir=releaser.WEIGHTS_DIR,
            failures=None):
    """One row per (arm, metric). With `arms`, the other arms' rows are kept from the
    existing results/<protocol>[-quick].csv, so re-running one arm (or tabulating it
    on another machine) does not turn the rest of a committed table into "not run".
    `failures` (run folder -> sentence) holds the runs that failed in this invocation; the
    runs found failed here (a corrupt file, metrics without a checkpoint, a last slice that
    exited non-zero) are added to it. The `failed` column says which seed failed and why."""
    spec = PROTOCOLS[protocol]
    failures = {} if failures is None else failures
    kept = {}
    if arms and results_dir:
        old = os.path.join(results_dir, protocol + ("-quick" if quick else "") + ".csv")
        if os.path.isfile(old):
            try:
                with open(old, newline="") as f:
                    kept = {(r["method"], r["metric"]): r for r in csv.DictReader(f)}
            except (OSError, KeyError, csv.Error, UnicodeDecodeError) as err:
                print(f"reproduce.py: warning: {old} is unreadable ({err}); the other arms' rows are not kept.")
    rows = []
    for arm in spec["arms"]:
        fresh = not arms or arm in arms
        runs_, failed = {}, {}
        for seed in seeds:
            out = run_dir(runs_dir, protocol, quick, arm, seed)
            status, value = run_status(out, weights_dir)
            if status == "done":
                bad = [k for k in spec["metrics"] if value.get(k) is not None and not _is_number(value[k])]
                if bad:
                    status, value = "failed", (f"{os.path.join(out, 'metrics.json')}: field `{bad[0]}` is "
                                               f"{value[bad[0]]!r}, not a number.")
            if status == "done" and out not in failures:
                runs_[seed] = dict(value, _evals=read_evals(out, weights_dir))
            elif status == "failed" or out in failures:
                failed[seed] = failures.get(out) or value
                if fresh:
                    failures.setdefault(out, value)
        failed_cell = "; ".join(f"s{seed}: {reason}" for seed, reason in failed.items()) or "-"
        done = list(runs_.values())
        for metric, paper in spec["metrics"].items():
            key = (arm, metric + (" (%)" if metric in PERCENT_METRICS else ""))
            if not fresh and key in kept:
                rows.append(kept[key])
                continue
            values = [r.get(metric) for r in done]
            scale = 100.0 if metric in PERCENT_METRICS else 1.0
            per_seed = "; ".join(f"s{seed} {scale * r[metric]:.{2 if scale == 100.0 else 3}f}"
                                 for seed, r in runs_.items() if r.get(metric) is not None)
            best = {seed: trajectory.best_of(r["_evals"], metric) for seed, r in runs_.items()}
            best = {seed: vs for seed, vs in best.items() if vs[0] is not None}
            best_cell = "; ".join(f"s{seed} {scale * v:.{2 if scale == 100.0 else 3}f} at {at:,}"
                                  for seed, (v, at) in best.items())
            walls = [r["_wall"] for r in done if _is_number(r.get("_wall"))]
            iters = sorted({str(r["_iterations"]) for r in done if r.get("_iterations") is not None})
            devices = sorted({str(r["_device"]) for r in done if r.get("_device")})
            rows.append(dict(
                protocol=protocol + (" (quick: NOT the paper protocol)" if quick else ""),
                method=arm, metric=metric + (" (%)" if metric in PERCENT_METRICS else ""),
                paper=_fmt_paper(paper.get(arm, [])),
                ours=_fmt_ours(values, metric), per_seed=per_seed or "-",
                best_of_10k=(f"{_fmt_ours([v for v, _ in best.values()], metric)} ({best_cell})" if best else "-"),
                seeds=f"{sum(v is not None for v in values)}/{len(seeds)}",
                iterations=",".join(iters) or "-",
                device=",".join(devices) or "-",
                wall_per_run=(f"{sum(walls) / len(walls) / 60:.1f} min" if walls else "-"),
                failed=failed_cell,
            ))
    return rows


COLUMNS = ["method", "metric", "paper", "ours", "per_seed", "best_of_10k", "seeds", "iterations", "device",
           "wall_per_run", "failed"]
BEST_NOTE = ("`ours` is the last model. `best_of_10k`: the best score among the checkpoints at multiples of "
             "10,000 updates (the authors' selection rule, which picks with the ground-truth labels; from the "
             "run's evals.csv, `--eval-every 10000`), per seed with its update; the gap to `ours` is what the "
             "rule adds to a number.")


def write_tables(protocol, quick, rows, results_dir):
    os.makedirs(results_dir, exist_ok=True)
    stem = os.path.join(results_dir, protocol + ("-quick" if quick else ""))

    def write_csv(f):
        w = csv.DictWriter(f, fieldnames=["protocol"] + COLUMNS, restval="-", extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)

    releaser.atomic_write(stem + ".csv", write_csv)
    spec = PROTOCOLS[protocol]
    fractions = [f"- {arm}: {'/'.join(map(str, a['fraction']))} of its paper protocol; schedules {a['schedules']}."
                 for arm, a in spec["arms"].items() if a.get("fraction")]
    lines = [f"### {protocol}{' --quick (NOT the paper protocol)' if quick else ''}", "",
             spec["doc"] + " " + spec["data_note"], ""] + (fractions + [""] if fractions else []) + [BEST_NOTE, "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r.get(c) or "-").replace("|", "/") for c in COLUMNS) + " |" for r in rows]
    releaser.atomic_write(stem + ".md", lambda f: f.write("\n".join(lines) + "\n"))
    return stem + ".md"


def slurm_available():
    """A SLURM cluster is reachable from here: sbatch on PATH, or inside a SLURM allocation."""
    return shutil.which("sbatch") is not None or any(k in os.environ for k in ("SLURM_JOB_ID", "SLURM_CLUSTER_NAME"))


def check_args(args):
    """One sentence for the first bad flag (before anything runs), else None."""
    budget = args.time_budget
    if any(s < 0 for s in args.seeds):
        return f"--seeds {' '.join(map(str, args.seeds))}: seeds are integers >= 0."
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        return f"--time-budget {budget:g}: give the minutes each run may take per invocation, a finite number > 0."
    if args.timeout_min < 1:
        return f"--timeout-min {args.timeout_min}: give the job time limit in minutes (>= 1)."
    if args.jobs < 1:
        return f"--jobs {args.jobs}: give the number of runs in parallel (>= 1)."
    if args.threads is not None and args.threads < 1:
        return f"--threads {args.threads}: give the threads per run (>= 1)."
    if args.gpus_per_job is not None and args.gpus_per_job < 0:
        return f"--gpus-per-job {args.gpus_per_job}: must be >= 0."
    if args.launcher == "submitit" and args.cluster == "slurm" and not slurm_available():
        return ("--cluster slurm: there is no SLURM here (no sbatch on PATH, no SLURM_* variables); run on the "
                "cluster's login node, or use --cluster local to run the jobs on this machine.")
    return None


def main(argv=None):
    """Returns the exit status: 0, 1 when a run failed, 2 for a bad flag, 128 + N after stop signal N."""
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description="Run a paper protocol with this repository's scripts and tabulate it.")
    p.add_argument("--protocol", choices=sorted(PROTOCOLS) + ["all"])
    p.add_argument("--quick", action="store_true", help="CPU-sized variant (NOT the paper protocol)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", help="only these arms (default all)")
    p.add_argument("--data-dir", default=os.path.join(ROOT, "..", "shared", "data"))
    p.add_argument("--device", default="auto")
    p.add_argument("--runs-dir", default=os.path.join(ROOT, "runs", "reproduce"))
    p.add_argument("--results-dir", default=os.path.join(ROOT, "results"))
    p.add_argument("--weights-dir", help="released weights and manifest.json (default: RESULTS_DIR/weights)")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (CPU: threads are split between them)")
    p.add_argument("--threads", type=int, help="threads per run (default: the CPU's cores / --jobs)")
    p.add_argument("--time-budget", type=float, metavar="MINUTES",
                   help="each run stops after MINUTES with a checkpoint; the same command continues it exactly")
    p.add_argument("--launcher", choices=["local", "submitit"], default="local",
                   help="local: a process pool on this machine (default); submitit: one job per run")
    p.add_argument("--cluster", choices=["slurm", "local"],
                   help="with --launcher submitit: a SLURM cluster, or this machine "
                        "(default: slurm where SLURM is found, i.e. sbatch on PATH or SLURM_* variables, else local)")
    p.add_argument("--partition", help="SLURM partition (--launcher submitit --cluster slurm)")
    p.add_argument("--gpus-per-job", type=int, help="GPUs per job (--launcher submitit)")
    p.add_argument("--timeout-min", type=int, default=240,
                   help="job time limit; a job that reaches it checkpoints and is requeued (default 240)")
    p.add_argument("--collect-only", action="store_true", help="only tabulate finished runs")
    p.add_argument("--release", action="store_true",
                   help="release the weights of finished runs to results/weights/ (and drop their results/runs/ folders)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--list", action="store_true", help="list the protocols")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="after --: flags passed to every script")
    args = p.parse_args(argv)
    if args.list or not args.protocol:
        for name, spec in PROTOCOLS.items():
            print(f"{name:20s} {spec['doc']}  arms: {', '.join(spec['arms'])}")
        return 0
    problem = check_args(args)
    if problem:
        print(f"reproduce.py: error: {problem}", file=sys.stderr)
        return 2
    if args.launcher == "submitit" and args.cluster is None:
        args.cluster = "slurm" if slurm_available() else "local"
        if args.cluster == "local":
            print("--launcher submitit: no SLURM here (no sbatch on PATH, no SLURM_* variables); "
                  "the jobs run on this machine (--cluster local).", flush=True)
    if args.launcher == "submitit" and not (args.collect_only or args.dry_run):
        try:
            import cloudpickle  # noqa: F401
            import submitit  # noqa: F401
        except ImportError:
            print("reproduce.py: error: --launcher submitit needs submitit (pip install -r requirements.txt).",
                  file=sys.stderr)
            return 2
    weights_dir = args.weights_dir or os.path.join(args.results_dir, "weights")
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    protocols = sorted(PROTOCOLS) if args.protocol == "all" else [args.protocol]
    failures = {}                                           # run folder -> one sentence
    for protocol in protocols:
        spec = PROTOCOLS[protocol]
        arms = [a for a in spec["arms"] if not args.arms or a in args.arms]
        if not args.collect_only:
            todo = []
            for arm in arms:
                if args.quick and spec["arms"][arm]["quick"] is None:
                    print(f"{protocol}/{arm}: no --quick variant defined, skipped")
                    continue
                for seed in args.seeds:
                    out = run_dir(args.runs_dir, protocol, args.quick, arm, seed)
                    if os.path.isfile(os.path.join(out, "metrics.json")):
                        print(f"done already: {out}")
                        continue
                    who = in_use_by(out)
                    if who:
                        print(f"FAILED: {in_use_message(out, who)}", flush=True)
                        if not args.dry_run:
                            failures[out] = in_use_message(out, who)
                        continue
                    cmd = command(spec, arm, seed, out, args.quick, args.data_dir, args.device, extra,
                                  args.time_budget)
                    if "--resume" in cmd:  # said now, before the slice trains
                        _, torn = read_slices(out)
                        if torn:
                            print(f"reproduce.py: warning: {torn}", flush=True)
                    todo.append((cmd, out))
            threads = args.threads or max(1, (os.cpu_count() or 1) // max(1, args.jobs))
            for cmd, out in todo:
                print(" ".join(["python"] + [c.replace(ROOT + os.sep, "") for c in cmd[1:]]), flush=True)
            if args.dry_run:
                continue
            if args.launcher == "submitit":
                _submit_all(todo, threads, args, failures=failures)
            else:
                with forwarding_stop_signals():
                    _run_all(todo, args.jobs, threads, failures)
                    stopped = stop_signal()
                if stopped:
                    shown = " ".join(["python", "benchmarks/reproduce.py"] + [_quote(a) for a in argv])
                    print(f"reproduce.py: stopped by {stopped}: the runs that were training saved a checkpoint "
                          f"(recorded in their reproduce.json); continue them with the same command: {shown}",
                          file=sys.stderr, flush=True)
                    return 128 + getattr(signal, stopped)
        if args.release and not args.dry_run:
            release_finished(protocol, args.quick, arms, args.seeds, args.runs_dir, weights_dir, failures)
        rows = collect(protocol, args.quick, args.seeds, args.runs_dir, args.arms, args.results_dir,
                       weights_dir, failures)
        try:
            path = write_tables(protocol, args.quick, rows, args.results_dir)
        except ReleaseError as err:
            print(f"reproduce.py: error: {err}", file=sys.stderr)
            return 1
        with open(path) as f:
            print(f.read())
    if failures and not args.dry_run:
        for out, reason in failures.items():
            print(f"FAILED: {reason}", file=sys.stderr)
        print(f"reproduce.py: {len(failures)} run(s) failed (listed above and in the tables' `failed` column).",
              file=sys.stderr)
        return 1
    return 0


def _quote(arg):
    import shlex
    return shlex.quote(arg)


def resume_variant(cmd, out):
    """`cmd` continued exactly: --out OUT (and --overwrite) become --resume OUT once OUT
    holds a checkpoint, so a requeued job picks up where the last one stopped."""
    if not os.path.isfile(os.path.join(out, "checkpoint.pt")) or "--resume" in cmd:
        return list(cmd)
    args, skip = [], False
    for a in cmd:
        if skip:
            skip = False
            continue
        if a == "--out":
            skip = True
            continue
        if a != "--overwrite":
            args.append(a)
    return args + ["--resume", out]


try:
    from submitit.helpers import Checkpointable, DelayedSubmission
except ImportError:  # submitit is in requirements.txt; only --launcher submitit needs it
    Checkpointable, DelayedSubmission = object, None


class SubmititRun(Checkpointable):
    """One run as a submitit job. On a time limit or pre-emption, submitit calls
    `checkpoint` in the job: the script is asked (SIGUSR1) to save a checkpoint at its next
    update, and the job is requeued with the same command, which then continues it with
    --resume, exactly (the same mechanism as --time-budget)."""

    def __init__(self):
        self.proc = None

    def __call__(self, cmd, out, threads):
        who = in_use_by(out)
        if who:
            raise RuntimeError(in_use_message(out, who))
        res = execute_run(resume_variant(cmd, out), out, threads, on_start=lambda p: setattr(self, "proc", p))
        self.proc = None
        if res["returncode"] != 0:
            raise RuntimeError(f"{out}: exit {res['returncode']}: {res['error']}")
        return read_run(out)

    def checkpoint(self, cmd, out, threads):
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGUSR1)
            proc.wait()                                   # it saves at its next update, then exits
        return DelayedSubmission(SubmititRun(), cmd, out, threads)

    def __getstate__(self):
        return {}                                         # a Popen does not travel with the job

    def __setstate__(self, state):
        self.proc = None


def _submit_all(todo, threads, args, on_submitted=None, failures=None):
    """Each run as a submitit job on a SLURM cluster or this machine; waits for all. A job
    that fails, or cannot be submitted, is one sentence in `failures`."""
    failures = {} if failures is None else failures
    try:
        import cloudpickle
        import submitit
    except ImportError:
        raise SystemExit("reproduce.py: error: --launcher submitit needs submitit (pip install -r requirements.txt).")
    for module in (sys.modules[SubmititRun.__module__], releaser):
        if module.__name__ != "__main__":
            cloudpickle.register_pickle_by_value(module)  # the job need not import benchmarks/
    jobs = []
    try:
        executor = submitit.AutoExecutor(folder=os.path.join(args.runs_dir, "submitit", "%j"), cluster=args.cluster)
        params = dict(timeout_min=args.timeout_min, cpus_per_task=threads, name="reproduce")
        if args.cluster == "slurm":
            params.update(slurm_partition=args.partition, gpus_per_node=args.gpus_per_job)
        elif args.gpus_per_job:
            params.update(gpus_per_node=args.gpus_per_job)
        executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
        for cmd, out in todo:
            jobs.append((executor.submit(SubmititRun(), cmd, out, threads), out))
    except Exception as err:  # no cluster, a bad partition, ...: one sentence per run not submitted
        reason = _last_line(str(err).encode()) or type(err).__name__
        for cmd, out in todo[len(jobs):]:
            failures[out] = f"{out}: could not submit the job to --cluster {args.cluster} ({reason})."
            print(f"FAILED: {failures[out]}", flush=True)
    for job, out in jobs:
        print(f"submitted job {job.job_id}: {out}", flush=True)
    if on_submitted is not None:  # tests: pre-empt a job while it runs
        on_submitted(jobs)
    for job, out in jobs:
        try:
            job.result()
            print(f"ok: {out}", flush=True)
        except Exception as err:  # a failed job is reported, the others go on
            reason = _last_line(str(err).encode()) or type(err).__name__
            failures[out] = reason if reason.startswith(out) else f"{out}: {reason}"
            print(f"FAILED: {failures[out]}", flush=True)
    return jobs


def release_finished(protocol, quick, arms, seeds, runs_dir, weights_dir=releaser.WEIGHTS_DIR, failures=None):
    """Release the weights of every finished run (results/weights/ + manifest.json); a run
    folder kept in the repository between slices (results/runs/) is then removed. A run that
    cannot be released is one sentence in `failures`; the others go on."""
    failures = {} if failures is None else failures
    spec = PROTOCOLS[protocol]
    kept_dir = os.path.join(ROOT, "results", "runs")
    tag = protocol + ("-quick" if quick else "")
    for arm in arms:
        method = spec["arms"][arm]["script"][:-3]
        for seed in seeds:
            out = run_dir(runs_dir, protocol, quick, arm, seed)
            if not os.path.isfile(os.path.join(out, "metrics.json")) or out in failures:
                continue
            try:
                info = read_run(out, weights_dir)
                # The protocol's canonical command (the run may have been started from another
                # checkout or data folder): what a reader runs to reproduce this file.
                canon = command(spec, arm, seed, os.path.join("runs", "reproduce", tag, f"{arm}-s{seed}"), quick,
                                "data", "auto", [], fresh=True)
                shown = " ".join(["python", os.path.basename(canon[1])] + canon[2:])
                path, _ = releaser.release(out, method, weights_dir, name=arm if arm != method else None,
                                           protocol=tag, command=shown, run=os.path.join(tag, f"{arm}-s{seed}"),
                                           wall_seconds=info.get("_wall"), device=info.get("_device"),
                                           **fraction_fields(spec["arms"][arm]))
            except ReleaseError as err:
                failures[out] = f"{out}: not released: {err}"
                print(f"FAILED: {failures[out]}", flush=True)
                continue
            print(f"released {_shown_path(path)}")
            if os.path.abspath(out).startswith(kept_dir + os.sep) and not in_use_by(out):
                shutil.rmtree(out)
                print(f"removed the finished run folder {os.path.relpath(out, ROOT)}")


def _shown_path(path):
    rel = os.path.relpath(path, ROOT)
    return path if rel.startswith(os.pardir) else rel


def _run_all(todo, jobs, threads, failures=None):
    """Sequential, or `jobs` at a time; a failed run is reported (in `failures`, with the last
    line it printed) and the others go on. After a stop signal no new run starts."""
    from concurrent.futures import ThreadPoolExecutor

    failures = {} if failures is None else failures

    def one(item):
        cmd, out = item
        if stop_signal():
            print(f"not started ({stop_signal()} received): {out}", flush=True)
            return
        who = in_use_by(out)                      # again: time has passed since the plan
        if who:
            failures[out] = in_use_message(out, who)
            print(f"FAILED: {failures[out]}", flush=True)
            return
        res = execute_run(cmd, out, threads, warn=False)
        rc, wall = res["returncode"], res["wall"]
        if rc is None:
            print(f"not started ({res['stopped_by']} received): {out}", flush=True)
            return
        finished = os.path.isfile(os.path.join(out, "metrics.json"))
        if res["stopped_by"] and (rc == 0 or rc == -signal.SIGTERM) and not finished:
            status = f"stopped by {res['stopped_by']}" + (" with a checkpoint" if rc == 0 else " before its first update")
        elif rc == 0 and not finished and "Continue with:" in res["last_line"]:
            status = "paused at its time budget (run the same command to continue)"
        elif rc == 0 and not finished:
            status = "trained, not evaluated (no metrics.json)"
        elif rc == 0:
            status = "ok"
        else:
            failures[out] = f"{out}: exit {rc}: {res['error']}"
            status = f"FAILED (exit {rc}: {res['error'].rstrip('.')}; see {out}/stdout.log)"
        print(f"{status}: {out} in {wall / 60:.1f} min", flush=True)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(one, todo))
    return failures


if __name__ == "__main__":
    sys.exit(main())
