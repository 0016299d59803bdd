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
"""

import argparse
import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import runs  # noqa: E402  (the repository's run-folder module)

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
}

PERCENT_METRICS = {"accuracy_hungarian", "accuracy_majority", "factor_vae_score"}


def run_dir(runs_dir, protocol, quick, arm, seed):
    return os.path.join(runs_dir, protocol + ("-quick" if quick else ""), f"{arm}-s{seed}")


def command(spec, arm, seed, out, quick, data_dir, device, extra, time_budget=None, fresh=False):
    """The script's command line for one run. A folder that holds an unfinished run
    (a checkpoint, no metrics.json) is continued exactly with --resume, the same flags."""
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


def execute(cmd, out, threads, on_start=None):
    """Run one training+evaluation (or one slice of it); record wall time, device and
    command next to its outputs. Slices of one run add up in reproduce.json."""
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    t0 = time.time()
    with open(os.path.join(out, "stdout.log"), "a") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        if on_start is not None:
            on_start(proc)
        proc.wait()
    wall = time.time() - t0
    path = os.path.join(out, "reproduce.json")
    slices = []
    if os.path.isfile(path) and "--resume" in cmd:
        with open(path) as f:
            slices = json.load(f).get("slices", [])
    slices.append(dict(wall_seconds=round(wall, 1), returncode=proc.returncode, git_commit=_git_commit()))
    with open(path, "w") as f:
        json.dump(dict(command=cmd, wall_seconds=round(sum(x["wall_seconds"] for x in slices), 1),
                       returncode=proc.returncode, threads=threads, slices=slices), f, indent=2)
    return proc.returncode, wall


def _git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _released(out):
    """The manifest entry of a run whose folder was removed after its weights were released."""
    parent, leaf = os.path.split(os.path.normpath(out))
    run = os.path.join(os.path.basename(parent), leaf)
    for entry in runs.read_manifest():
        if entry.get("run") == run:
            return entry
    return None


def read_run(out):
    """Metrics, iterations, device and wall time of one finished run folder (or None); a
    released run whose folder is gone is read from results/weights/manifest.json."""
    path = os.path.join(out, "metrics.json")
    if not os.path.isfile(path):
        entry = _released(out)
        if entry is None:
            return None
        return dict(entry["metrics"], _iterations=entry["updates"], _device=entry.get("device"),
                    _wall=entry.get("wall_seconds"))
    with open(path) as f:
        m = json.load(f)
    cfg = {}
    if os.path.isfile(os.path.join(out, "config.json")):
        with open(os.path.join(out, "config.json")) as f:
            cfg = json.load(f)
    wall = None
    if os.path.isfile(os.path.join(out, "reproduce.json")):
        with open(os.path.join(out, "reproduce.json")) as f:
            wall = json.load(f).get("wall_seconds")
    if wall is None and os.path.isfile(os.path.join(out, "log.csv")):
        # A run started by hand: training time from the log plus the evaluation time.
        with open(os.path.join(out, "log.csv"), newline="") as f:
            rows = csv.DictReader(line for line in f if not line.startswith("#"))
            wall = sum(float(r["seconds"]) for r in rows) + float(m.get("eval_seconds") or 0.0)
    m["_iterations"] = cfg.get("iterations_total", m.get("step"))
    m["_device"] = m.get("device", cfg.get("device"))
    if m["_device"] in (None, "auto") and os.path.isfile(os.path.join(out, "stdout.log")):
        with open(os.path.join(out, "stdout.log")) as f:  # the scripts print "... device <name>"
            words = f.read().split()
        m["_device"] = next((w for a, w in zip(words, words[1:]) if a == "device"), m["_device"])
    m["_wall"] = wall
    return m


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


def collect(protocol, quick, seeds, runs_dir, arms=None, results_dir=None):
    """One row per (arm, metric). With `arms`, the other arms' rows are kept from the
    existing results/<protocol>[-quick].csv, so re-running one arm (or tabulating it
    on another machine) does not turn the rest of a committed table into "not run"."""
    spec = PROTOCOLS[protocol]
    kept = {}
    if arms and results_dir:
        old = os.path.join(results_dir, protocol + ("-quick" if quick else "") + ".csv")
        if os.path.isfile(old):
            with open(old, newline="") as f:
                kept = {(r["method"], r["metric"]): r for r in csv.DictReader(f)}
    rows = []
    for arm in spec["arms"]:
        runs_ = {s: read_run(run_dir(runs_dir, protocol, quick, arm, s)) for s in seeds}
        done = [r for r in runs_.values() if r is not None]
        for metric, paper in spec["metrics"].items():
            key = (arm, metric + (" (%)" if metric in PERCENT_METRICS else ""))
            if arms and arm not in arms and key in kept:
                rows.append(kept[key])
                continue
            values = [r.get(metric) for r in done]
            scale = 100.0 if metric in PERCENT_METRICS else 1.0
            per_seed = "; ".join(f"s{seed} {scale * r[metric]:.{2 if scale == 100.0 else 3}f}"
                                 for seed, r in runs_.items() if r is not None and r.get(metric) is not None)
            walls = [r["_wall"] for r in done if r.get("_wall")]
            iters = sorted({r["_iterations"] for r in done if r.get("_iterations") is not None})
            devices = sorted({str(r["_device"]) for r in done if r.get("_device")})
            rows.append(dict(
                protocol=protocol + (" (quick: NOT the paper protocol)" if quick else ""),
                method=arm, metric=metric + (" (%)" if metric in PERCENT_METRICS else ""),
                paper=_fmt_paper(paper.get(arm, [])),
                ours=_fmt_ours(values, metric), per_seed=per_seed or "-",
                seeds=f"{sum(v is not None for v in values)}/{len(seeds)}",
                iterations=",".join(str(i) for i in iters) or "-",
                device=",".join(devices) or "-",
                wall_per_run=(f"{sum(walls) / len(walls) / 60:.1f} min" if walls else "-"),
            ))
    return rows


def write_tables(protocol, quick, rows, results_dir):
    os.makedirs(results_dir, exist_ok=True)
    stem = os.path.join(results_dir, protocol + ("-quick" if quick else ""))
    cols = ["method", "metric", "paper", "ours", "per_seed", "seeds", "iterations", "device", "wall_per_run"]
    with open(stem + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["protocol"] + cols)
        w.writeheader()
        w.writerows(rows)
    spec = PROTOCOLS[protocol]
    lines = [f"### {protocol}{' --quick (NOT the paper protocol)' if quick else ''}", "",
             spec["doc"] + " " + spec["data_note"], "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "-")) for c in cols) + " |" for r in rows]
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    return stem + ".md"


def main(argv=None):
    p = argparse.ArgumentParser(description="Run a paper protocol with this repository's scripts and tabulate it.")
    p.add_argument("--protocol", choices=sorted(PROTOCOLS) + ["all"])
    p.add_argument("--quick", action="store_true", help="CPU-sized variant (NOT the paper protocol)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", help="only these arms (default all)")
    p.add_argument("--data-dir", default=os.path.join(ROOT, "..", "shared", "data"))
    p.add_argument("--device", default="auto")
    p.add_argument("--runs-dir", default=os.path.join(ROOT, "runs", "reproduce"))
    p.add_argument("--results-dir", default=os.path.join(ROOT, "results"))
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (CPU: threads are split between them)")
    p.add_argument("--threads", type=int, help="threads per run (default: the CPU's cores / --jobs)")
    p.add_argument("--time-budget", type=float, metavar="MINUTES",
                   help="each run stops after MINUTES with a checkpoint; the same command continues it exactly")
    p.add_argument("--launcher", choices=["local", "submitit"], default="local",
                   help="local: a process pool on this machine (default); submitit: one job per run")
    p.add_argument("--cluster", choices=["slurm", "local"], default="slurm",
                   help="with --launcher submitit: a SLURM cluster, or this machine")
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
        return
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    protocols = sorted(PROTOCOLS) if args.protocol == "all" else [args.protocol]
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
                    todo.append((command(spec, arm, seed, out, args.quick, args.data_dir, args.device, extra,
                                         args.time_budget), out))
            threads = args.threads or max(1, (os.cpu_count() or 1) // max(1, args.jobs))
            for cmd, out in todo:
                print(" ".join(["python"] + [c.replace(ROOT + os.sep, "") for c in cmd[1:]]), flush=True)
            if args.dry_run:
                continue
            if args.launcher == "submitit":
                _submit_all(todo, threads, args)
            else:
                _run_all(todo, args.jobs, threads)
        rows = collect(protocol, args.quick, args.seeds, args.runs_dir, args.arms, args.results_dir)
        if args.release and not args.dry_run:
            release_finished(protocol, args.quick, arms, args.seeds, args.runs_dir)
        path = write_tables(protocol, args.quick, rows, args.results_dir)
        with open(path) as f:
            print(f.read())


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
        rc, _ = execute(resume_variant(cmd, out), out, threads, on_start=lambda p: setattr(self, "proc", p))
        self.proc = None
        if rc != 0:
            raise RuntimeError(f"{out}: the run failed (exit {rc}); see {out}/stdout.log")
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


def _submit_all(todo, threads, args, on_submitted=None):
    """Each run as a submitit job on a SLURM cluster or this machine; waits for all."""
    try:
        import cloudpickle
        import submitit
    except ImportError:
        raise SystemExit("reproduce.py: error: --launcher submitit needs submitit (pip install -r requirements.txt).")
    module = sys.modules[SubmititRun.__module__]
    if module.__name__ != "__main__":
        cloudpickle.register_pickle_by_value(module)      # the job need not import benchmarks/
    executor = submitit.AutoExecutor(folder=os.path.join(args.runs_dir, "submitit", "%j"), cluster=args.cluster)
    params = dict(timeout_min=args.timeout_min, cpus_per_task=threads, name="reproduce")
    if args.cluster == "slurm":
        params.update(slurm_partition=args.partition, gpus_per_node=args.gpus_per_job)
    elif args.gpus_per_job:
        params.update(gpus_per_node=args.gpus_per_job)
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    jobs = [(executor.submit(SubmititRun(), cmd, out, threads), out) for cmd, out in todo]
    for job, out in jobs:
        print(f"submitted job {job.job_id}: {out}", flush=True)
    if on_submitted is not None:  # tests: pre-empt a job while it runs
        on_submitted(jobs)
    failed = 0
    for job, out in jobs:
        try:
            job.result()
            print(f"ok: {out}", flush=True)
        except Exception as err:  # a failed job is reported, the others go on
            failed += 1
            print(f"FAILED: {out}: {str(err).strip().splitlines()[-1] if str(err).strip() else err}", flush=True)
    if failed:
        print(f"{failed} run(s) failed")
    return jobs


def release_finished(protocol, quick, arms, seeds, runs_dir, weights_dir=runs.WEIGHTS_DIR):
    """Release the weights of every finished run (results/weights/ + manifest.json); a run
    folder kept in the repository between slices (results/runs/) is then removed."""
    spec = PROTOCOLS[protocol]
    kept_dir = os.path.join(ROOT, "results", "runs")
    for arm in arms:
        method = spec["arms"][arm]["script"][:-3]
        for seed in seeds:
            out = run_dir(runs_dir, protocol, quick, arm, seed)
            if not os.path.isfile(os.path.join(out, "metrics.json")):
                continue
            info = read_run(out)
            # The protocol's canonical command (the run may have been started from another
            # checkout or data folder): what a reader runs to reproduce this file.
            canon = command(spec, arm, seed, os.path.join("runs", "reproduce", protocol + ("-quick" if quick else ""),
                                                           f"{arm}-s{seed}"), quick, "../shared/data", "auto", [], fresh=True)
            shown = " ".join(["python", os.path.basename(canon[1])] + canon[2:])
            path, _ = runs.release(out, method, weights_dir, name=arm if arm != method else None,
                                   protocol=protocol + ("-quick" if quick else ""), command=shown,
                                   run=os.path.join(protocol + ("-quick" if quick else ""), f"{arm}-s{seed}"),
                                   wall_seconds=info.get("_wall"), device=info.get("_device"))
            print(f"released {os.path.relpath(path, ROOT)}")
            if os.path.abspath(out).startswith(kept_dir + os.sep):
                shutil.rmtree(out)
                print(f"removed the finished run folder {os.path.relpath(out, ROOT)}")


def _run_all(todo, jobs, threads):
    """Sequential, or `jobs` at a time; a failed run is reported and the others go on."""
    from concurrent.futures import ThreadPoolExecutor

    def one(item):
        cmd, out = item
        rc, wall = execute(cmd, out, threads)
        paused = rc == 0 and not os.path.isfile(os.path.join(out, "metrics.json"))
        status = ("paused at its time budget (run the same command to continue)" if paused else
                  "ok" if rc == 0 else f"FAILED (exit {rc}, see {out}/stdout.log)")
        print(f"{status}: {out} in {wall / 60:.1f} min", flush=True)
        return rc

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        codes = list(pool.map(one, todo))
    if any(codes):
        print(f"{sum(c != 0 for c in codes)} run(s) failed")


if __name__ == "__main__":
    main()
