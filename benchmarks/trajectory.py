"""The accuracy trajectory of the protocol runs, and the authors' checkpoint rule.

A run trained with `--eval-every 10000` writes one row of metrics per 10,000 updates into
its folder's evals.csv. For the updates a run passed before it had that flag, this script
evaluates the checkpoints that git history holds (one per committed slice), with the
script's own `--eval-only`, and adds them to evals.csv. Then it plots accuracy against
updates, every seed of every method of a protocol in one figure.

    # evaluate the committed checkpoints of a run folder (cached; merged into evals.csv
    # once the run is not training, since one folder has one writer)
    python benchmarks/trajectory.py history results/runs/mnist-accuracy/cascadevae-s0 -- --data-dir ../shared/data
    # the multiples of 10,000 it passed without --eval-every: re-trained exactly from the
    # committed checkpoints (--stop-at, --eval-every), evaluated, cached, merged
    python benchmarks/trajectory.py replay [--dry-run] results/runs/mnist-accuracy/cascadevae-s0 -- --data-dir ../shared/data
    # results/mnist-accuracy_accuracy_vs_updates.png from every evals.csv of the protocol
    python benchmarks/trajectory.py plot mnist-accuracy

`best_of` gives the authors' selection rule: their code evaluates a checkpoint every 10,000
updates and keeps the one with the best ground-truth score. A table reports it beside the
last model, which stays the headline: the gap is how much the rule inflates a number.
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import runs  # noqa: E402

CACHE = os.path.join(ROOT, ".trajectory-cache")   # metrics of evaluated history checkpoints (git-ignored)
SELECTION_EVERY = 10_000                          # the authors' checkpoint interval


def git(*args):
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, check=True).stdout


def history_checkpoints(run_dir):
    """(commit, step) of every committed version of RUN/checkpoint.pt, oldest first."""
    rel = os.path.relpath(os.path.join(os.path.abspath(run_dir), "checkpoint.pt"), ROOT)
    commits = git("log", "--format=%H", "--", rel).decode().split()
    return rel, list(reversed(commits))


def evaluate_commit(rel, commit, extra):
    """Metrics of the checkpoint at `commit` (cached by commit and path)."""
    key = os.path.join(CACHE, rel.replace(os.sep, "+") + f"@{commit[:12]}.json")
    if os.path.exists(key):
        return json.load(open(key))
    with tempfile.TemporaryDirectory() as tmp:
        ckpt_path = os.path.join(tmp, "checkpoint.pt")
        with open(ckpt_path, "wb") as f:
            f.write(git("show", f"{commit}:{rel}"))
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        cmd = [sys.executable, os.path.join(ROOT, ckpt["method"] + ".py"), "--eval-only", "--checkpoint",
               ckpt_path, "--out", os.path.join(tmp, "eval"), "--no-progress", *extra]
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"trajectory.py: {' '.join(cmd)} failed: "
                             f"{(r.stderr or r.stdout).strip().splitlines()[-1]}")
        res = json.load(open(os.path.join(tmp, "eval", "metrics.json")))
    res["source"] = f"checkpoint of commit {commit[:12]}"
    os.makedirs(CACHE, exist_ok=True)
    runs.write_json(key, res)
    return res


def replay(run_dir, extra, every=SELECTION_EVERY, dry_run=False, targets=None):
    """The authors' 10k points a run passed before it had --eval-every: resume a copy of the
    latest committed checkpoint before each missing multiple of `every` with --stop-at there
    and --eval-every (exact resume: the same model the straight run had), and cache the
    evaluation. Consecutive missing points continue one copy. Returns the metrics dicts."""
    rel, commits = history_checkpoints(run_dir)
    steps = {}
    for c in commits:                       # the step of each committed checkpoint
        steps[c] = int(torch.load(_checkpoint_at(rel, c), map_location="cpu", weights_only=True)["step"])
    evals = read_evals(evals_path(run_dir))
    if os.path.isfile(os.path.join(run_dir, "checkpoint.pt")):
        current = int(torch.load(os.path.join(run_dir, "checkpoint.pt"), map_location="cpu", weights_only=True)["step"])
    else:                                   # released: its folder is gone, its evals.csv kept with the weights
        current = max([int(float(r["step"])) for r in evals] + list(steps.values()) + [0])
    have = {int(float(r["step"])) for r in evals}
    have |= set(steps.values())            # a committed checkpoint on a multiple: `history` evaluates it
    wanted = [m for m in range(every, current + 1, every) if targets is None or m in targets]
    missing = [m for m in wanted if m not in have and not _cached_step(rel, m)]
    results = [_cached_step(rel, m) for m in wanted if _cached_step(rel, m)]
    plan = []                               # (commit, start step, [targets])
    for m in missing:
        c = max((c for c in commits if steps[c] < m), key=lambda c: steps[c], default=None)
        if c is None:
            continue
        if plan and plan[-1][0] == c:
            plan[-1][2].append(m)
        else:
            plan.append((c, steps[c], [m]))
    for c, start, targets in plan:
        print(f"replay {run_dir} from {start:,} ({c[:12]}) to {', '.join(f'{t:,}' for t in targets)}: "
              f"{targets[-1] - start:,} updates", flush=True)
    if dry_run:
        return results
    for c, start, targets in plan:
        with tempfile.TemporaryDirectory() as tmp:
            run = os.path.join(tmp, "run")
            os.makedirs(run)
            with open(os.path.join(run, "checkpoint.pt"), "wb") as f:
                f.write(git("show", f"{c}:{rel}"))
            method = torch.load(os.path.join(run, "checkpoint.pt"), map_location="cpu", weights_only=True)["method"]
            for t in targets:
                cmd = [sys.executable, os.path.join(ROOT, method + ".py"), "--resume", run, "--stop-at", str(t),
                       "--eval-every", str(every), "--no-eval", "--no-progress", *extra]
                r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
                if r.returncode != 0:
                    raise SystemExit(f"trajectory.py: {' '.join(cmd)} failed: "
                                     f"{(r.stderr or r.stdout).strip().splitlines()[-1]}")
                # A run stopped on an evaluation's update leaves that evaluation to its resume, which
                # makes it up first: one more slice of one update evaluates the model at t.
                r = subprocess.run(cmd[:cmd.index("--stop-at") + 1] + [str(t + 1)] + cmd[cmd.index("--stop-at") + 2:],
                                   cwd=ROOT, capture_output=True, text=True)
                rows = [x for x in read_evals(os.path.join(run, "evals.csv")) if int(float(x["step"])) == t]
                if r.returncode != 0 or not rows:
                    raise SystemExit(f"trajectory.py: the evaluation at update {t} of the replay failed: "
                                     f"{(r.stderr or r.stdout or 'no evals.csv row').strip().splitlines()[-1]}")
                row = rows[0]
                res = {k: (float(v) if v not in ("", None) else None) for k, v in row.items() if k != "step"}
                res.update(step=t, source=f"replayed from the checkpoint of commit {c[:12]} (step {start})")
                runs.write_json(_cache_key(rel, f"step{t}"), res)
                print(f"step {t:,}: " + ", ".join(f"{k} {res[k]:.4f}" for k in ("accuracy_hungarian", "accuracy_majority")
                                                  if res.get(k) is not None), flush=True)
                results.append(res)
    return sorted(results, key=lambda r: r["step"])


def _cache_key(rel, tag):
    os.makedirs(CACHE, exist_ok=True)
    return os.path.join(CACHE, rel.replace(os.sep, "+") + f"@{tag}.json")


def _cached_step(rel, step):
    path = os.path.join(CACHE, rel.replace(os.sep, "+") + f"@step{step}.json")
    return json.load(open(path)) if os.path.exists(path) else None


def _checkpoint_at(rel, commit):
    import io
    return io.BytesIO(git("show", f"{commit}:{rel}"))


def read_evals(path):
    return runs.read_log_rows(path) if os.path.exists(path) else []


def evals_path(run_dir):
    """RUN/evals.csv; for a released run, whose folder is removed, the copy kept with its
    weights (results/weights/evals/<protocol>/<run>/evals.csv)."""
    if os.path.isdir(run_dir):
        return os.path.join(run_dir, "evals.csv")
    released = os.path.join(ROOT, "results", "weights", "evals",
                            *os.path.normpath(os.path.abspath(run_dir)).split(os.sep)[-2:], "evals.csv")
    if os.path.isfile(released):
        return released
    raise SystemExit(f"trajectory.py: {run_dir} does not exist and no released evals.csv is at {released}.")


def merge(run_dir, results):
    """Add the history rows to RUN/evals.csv, or a released run's kept copy (rows of steps it
    has are kept as they are), under that folder's lock."""
    path = evals_path(run_dir)
    folder = os.path.dirname(path)
    holder = runs.lock_holder(folder)
    if holder:
        print(f"{folder} is in use ({holder}); its evals.csv is merged when it is not (the metrics are cached).")
        return False
    runs.acquire_lock(folder)
    try:
        rows = read_evals(path)
        have = {int(float(r["step"])) for r in rows}
        columns = list(rows[0])[1:] if rows else sorted(
            k for k, v in results[0].items() if k != "step" and (v is None or isinstance(v, (bool, int, float))))
        for res in results:
            if res["step"] not in have:
                rows.append({"step": res["step"], **{c: "" if res.get(c) is None else f"{res[c]:.6g}" for c in columns}})
        rows.sort(key=lambda r: int(float(r["step"])))
        with open(path + f".{os.getpid()}.tmp", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", *columns])
            w.writerows([[r["step"], *[r.get(c, "") for c in columns]] for r in rows])
        os.replace(path + f".{os.getpid()}.tmp", path)
    finally:
        runs.release_locks()
    print(f"{path}: {len(rows)} evaluated updates")
    return True


def best_of(rows, key="accuracy_hungarian", every=SELECTION_EVERY):
    """The authors' rule: the best `key` over the checkpoints at multiples of `every`
    updates (None when evals.csv has none of them). Returns (value, step)."""
    scored = [(float(r[key]), int(float(r["step"]))) for r in rows
              if r.get(key) not in (None, "") and int(float(r["step"])) % every == 0]
    return max(scored) if scored else (None, None)


def plot(protocol, runs_dirs, out, keys=("accuracy_hungarian", "accuracy_majority")):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    curves = {}
    for base in runs_dirs:
        folder = os.path.join(base, protocol)
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            rows = read_evals(os.path.join(folder, name, "evals.csv"))
            if rows:
                curves[name] = rows
    if not curves:
        raise SystemExit(f"trajectory.py: no evals.csv under {runs_dirs} for {protocol}.")
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, rows in curves.items():
            pts = [(int(float(r["step"])), 100 * float(r[key])) for r in rows if r.get(key) not in (None, "")]
            ax.plot(*zip(*pts), marker="o", ms=3, label=name)
            best, at = best_of(rows, key)
            if best is not None:
                ax.plot([at], [100 * best], marker="*", ms=12, color=ax.lines[-1].get_color())
        ax.set(xlabel="updates", ylabel=f"{key.replace('_', ' ')} (%)", title=f"{protocol}: {key.split('_')[1]}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("accuracy of the model at each evaluated update; star: best of the 10k checkpoints "
                 "(the authors' selection rule)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out} ({', '.join(curves)})")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("history", help="evaluate a run folder's committed checkpoints into its evals.csv")
    h.add_argument("run_dir")
    h.add_argument("extra", nargs=argparse.REMAINDER, help="after --: flags for --eval-only (e.g. --data-dir)")
    r = sub.add_parser("replay", help="the multiples of 10,000 updates a run passed without --eval-every, "
                       "re-trained exactly from its committed checkpoints, into its evals.csv")
    r.add_argument("run_dir")
    r.add_argument("--dry-run", action="store_true", help="print the replays and their length only")
    r.add_argument("--targets", type=int, nargs="+", metavar="UPDATE", help="only these multiples (default: all)")
    r.add_argument("--every", type=int, default=SELECTION_EVERY, help="the checkpoint interval (default 10,000)")
    r.add_argument("extra", nargs=argparse.REMAINDER, help="after --: flags for the resumed runs (e.g. --data-dir)")
    g = sub.add_parser("plot", help="results/<protocol>_accuracy_vs_updates.png")
    g.add_argument("protocol")
    g.add_argument("--runs-dir", action="append", help="folders holding <protocol>/<run>/evals.csv "
                   "(default: results/runs and results/weights/evals)")
    g.add_argument("--out")
    args = p.parse_args(argv)
    if args.cmd == "replay":
        results = replay(args.run_dir, args.extra[1:] if args.extra[:1] == ["--"] else args.extra,
                         every=args.every, dry_run=args.dry_run, targets=args.targets)
        if results and not args.dry_run:
            merge(args.run_dir, results)
    elif args.cmd == "history":
        extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
        rel, commits = history_checkpoints(args.run_dir)
        if not commits:
            raise SystemExit(f"trajectory.py: git history holds no {rel}.")
        results = []
        for c in commits:
            res = evaluate_commit(rel, c, extra)
            print(f"{c[:12]} step {res['step']}: " + ", ".join(
                f"{k} {res[k]:.4f}" for k in ("accuracy_hungarian", "accuracy_majority") if res.get(k) is not None),
                flush=True)
            results.append(res)
        merge(args.run_dir, results)
    else:
        dirs = args.runs_dir or [os.path.join(ROOT, "results", "runs"), os.path.join(ROOT, "results", "weights", "evals")]
        plot(args.protocol, dirs, args.out or os.path.join(ROOT, "results", f"{args.protocol}_accuracy_vs_updates.png"))


if __name__ == "__main__":
    main()
