"""Paired precision runs: the same protocol and seeds in fp32 and in bf16 (or fp16), side by side.

    python benchmarks/precision.py                                   # the three comparisons, fp32 vs bf16
    python benchmarks/precision.py --device cuda --jobs 6            # the same on a GPU
    python benchmarks/precision.py --device cuda --against fp16       # fp16 (CUDA only) instead of bf16
    python benchmarks/precision.py --collect-only                    # the report from finished runs
    python benchmarks/precision.py --collect-only --runs-dir results --device-note "..."   # the committed runs
    python benchmarks/precision.py --only jointvae-mnist --dry-run   # print the commands

Comparisons (the paper-protocol rows of the README stay fp32; these say whether the
other precision may be used for the `shapes` models):
  jointvae-mnist          JointVAE, App. C.1 preset on the MNIST test split (the mnist-accuracy
                          protocol, 15,600 updates), seeds 0-4
  cascadevae-mnist-quick  CascadeVAE, mnist-accuracy --quick (15,000 updates, r = 1250), seeds 0-3
  btcvae-shapes-quick     beta-TCVAE (beta 6), dsprites-mig --quick (2000 updates, batch 128), seeds 0-3
Two seeds more than the minimum of 3, 2 and 2, because a verdict between small samples' spreads
is fragile (the README's rule sums two sample standard deviations).

Each run is benchmarks/reproduce.py's command for that protocol arm plus `--precision P`,
in RUNS/precision/<comparison>/<P>-s<seed>/ (a finished folder is reused, a paused one is
resumed exactly, as in reproduce.py). The report (--out, default results/precision.md) gives
for each comparison:
  - the protocol's metrics per seed and precision, and mean +- sample std;
  - the final loss terms: the last log.csv row (a mean over its --log-every updates);
  - the loss-curve difference: mean |loss_P - loss_fp32| over the logged updates of one seed,
    in % of the fp32 loss, beside the same quantity between two fp32 seeds (what a change of
    seed alone moves the curve);
  - training ms per update (log.csv's seconds, evaluations excluded) and their ratio;
  - per metric, the README's rule for an ordering: a gap between the two means larger than the
    sum of their seeds' standard deviations. P is "within seed noise" when no metric has one.
One line at the top concludes over all comparisons. `--iterations N` shortens every run for a
smoke-scale check; the report then says that it is not the comparison above.
"""

import argparse
import csv
import importlib.util
import math
import os
import platform
import re
import signal
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _import_sibling(name):
    """benchmarks/<name>.py by its path (benchmarks/metrics.py must not shadow metrics.py)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), name + ".py")
    module = sys.modules.get(name)
    if module is not None and os.path.abspath(getattr(module, "__file__", "") or "") == path:
        return module
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


reproduce = _import_sibling("reproduce")

COMPARISONS = {
    "jointvae-mnist": dict(protocol="mnist-accuracy", arm="jointvae", quick=False, seeds=[0, 1, 2, 3, 4],
                           doc="JointVAE, App. C.1 preset on the MNIST test split (mnist-accuracy)"),
    "cascadevae-mnist-quick": dict(protocol="mnist-accuracy", arm="cascadevae", quick=True, seeds=[0, 1, 2, 3],
                                   doc="CascadeVAE, mnist-accuracy --quick (15,000 updates, r = 1250)"),
    "btcvae-shapes-quick": dict(protocol="dsprites-mig", arm="btcvae", quick=True, seeds=[0, 1, 2, 3],
                                doc="beta-TCVAE (beta 6), dsprites-mig --quick (2000 updates, batch 128)"),
}
REFERENCE = "fp32"
NOT_TERMS = {"step", "seconds", "img_per_s", "relieved", "solve_ms"}
PER_UNIT = re.compile(r"^kl_[zc]\d+$")                 # one column per latent unit: left out of the table


def run_folder(runs_dir, name, precision, seed):
    return os.path.join(runs_dir, "precision", name, f"{precision}-s{seed}")


def commands(names, precisions, seeds, args, extra):
    """[(command, run folder)] for every comparison x precision x seed not finished yet."""
    todo = []
    for name in names:
        comp = COMPARISONS[name]
        spec = reproduce.PROTOCOLS[comp["protocol"]]
        for precision in precisions:
            for seed in seeds or comp["seeds"]:
                out = run_folder(args.runs_dir, name, precision, seed)
                if os.path.isfile(os.path.join(out, "metrics.json")):
                    print(f"done already: {out}")
                    continue
                flags = ["--precision", precision] + (["--iterations", str(args.iterations)] if args.iterations else [])
                todo.append((reproduce.command(spec, comp["arm"], seed, out, comp["quick"], args.data_dir, args.device,
                                               flags + list(extra), args.time_budget), out))
    return todo


# ---------------------------------------------------------------------------
# Reading finished runs
# ---------------------------------------------------------------------------

def read_log(out):
    """log.csv as a list of {column: float} (comment lines skipped); [] without one."""
    path = os.path.join(out, "log.csv")
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    parsed = []
    for row in rows:
        try:
            parsed.append({k: float(v) for k, v in row.items() if k is not None and v not in (None, "")})
        except ValueError:
            raise reproduce.ReleaseError(f"{path}: a row holds a value that is not a number; "
                                         "the run's log is damaged, train the run again.")
    return parsed


def run_status(out):
    """reproduce.run_status, except that a finished run needs no checkpoint.pt: the report reads
    only metrics.json and log.csv, so the paired runs can be kept without their weights (a
    beta-TCVAE checkpoint is 170 MB)."""
    path = os.path.join(out, "metrics.json")
    if os.path.isfile(path):
        try:
            return "done", reproduce.releaser.read_json(path)   # a corrupt or non-object file: one sentence
        except reproduce.ReleaseError as err:
            return "failed", str(err)
    return reproduce.run_status(out)


def final_terms(rows):
    """The loss terms of the last logged row (per-unit KL columns and bookkeeping left out)."""
    if not rows:
        return {}
    return {k: v for k, v in rows[-1].items() if k not in NOT_TERMS and not PER_UNIT.match(k)}


def ms_per_update(rows):
    """Training wall time per update, evaluations excluded (log.csv's per-row seconds)."""
    if not rows or rows[-1].get("step", 0) <= 0 or "seconds" not in rows[0]:
        return None
    return 1000.0 * sum(r["seconds"] for r in rows) / rows[-1]["step"]


def curve_gap(rows_a, rows_b, key="loss"):
    """mean |b - a| / mean |a| in %, over the logged updates both runs have; None without any."""
    a = {r["step"]: r[key] for r in rows_a if key in r}
    b = {r["step"]: r[key] for r in rows_b if key in r}
    steps = sorted(set(a) & set(b))
    if not steps:
        return None
    denominator = sum(abs(a[s]) for s in steps)
    return 100.0 * sum(abs(b[s] - a[s]) for s in steps) / denominator if denominator else None


def mean_std(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
    return mean, std


def verdict(ref, other):
    """The README's rule on two lists of per-seed values: (gap, sum of stds, word)."""
    (m0, s0), (m1, s1) = mean_std(ref), mean_std(other)
    if m0 is None or m1 is None:
        return None, None, "not run"
    gap = abs(m1 - m0)
    if s0 is None or s1 is None:
        return gap, None, "undetermined (one seed)"
    return gap, s0 + s1, ("within seed noise" if gap <= s0 + s1 else "DIFFERS")


def collect(name, precisions, seeds, runs_dir):
    """Everything the report says about one comparison."""
    comp = COMPARISONS[name]
    metrics = list(reproduce.PROTOCOLS[comp["protocol"]]["metrics"])
    seeds = seeds or comp["seeds"]
    runs = {}
    for precision in precisions:
        for seed in seeds:
            out = run_folder(runs_dir, name, precision, seed)
            status, m = run_status(out)
            rows = read_log(out) if status == "done" else []
            runs[precision, seed] = dict(status=status, metrics=m if status == "done" else {}, rows=rows,
                                         error=m if status == "failed" else None)
    result = dict(name=name, doc=comp["doc"], seeds=seeds, precisions=precisions, runs=runs, metrics={})
    ref = precisions[0]
    for metric in metrics:
        per = {p: [runs[p, s]["metrics"].get(metric) for s in seeds] for p in precisions}
        if all(v is None for vals in per.values() for v in vals):
            continue
        result["metrics"][metric] = dict(per=per, verdicts={p: verdict(per[ref], per[p]) for p in precisions[1:]})
    result["curve"] = {p: [curve_gap(runs[ref, s]["rows"], runs[p, s]["rows"]) for s in seeds]
                       for p in precisions[1:]}
    done = [s for s in seeds if runs[ref, s]["rows"]]
    result["seed_curve"] = (curve_gap(runs[ref, done[0]]["rows"], runs[ref, done[1]]["rows"])
                            if len(done) > 1 else None)
    result["speed"] = {p: [ms_per_update(runs[p, s]["rows"]) for s in seeds] for p in precisions}
    result["updates"] = {p: [runs[p, s]["rows"][-1]["step"] if runs[p, s]["rows"] else None for s in seeds]
                         for p in precisions}
    return result


def conclusion(results, other):
    """One line over all comparisons."""
    words = [(r["name"], metric, m["verdicts"][other][2]) for r in results for metric, m in r["metrics"].items()]
    missing = [(r["name"], p, s) for r in results for (p, s), run in r["runs"].items() if run["status"] != "done"]
    differs = [f"{n}: {metric}" for n, metric, w in words if w == "DIFFERS"]
    if differs:
        return f"**{other} is NOT within seed noise** of fp32 on " + ", ".join(differs) + "."
    if missing or not words:
        return (f"**Not concluded:** {len(missing)} of the runs have not finished"
                + (" (" + ", ".join(f"{n} {p} seed {s}" for n, p, s in missing[:6]) + ")" if missing else "") + ".")
    if any(w != "within seed noise" for _, _, w in words):
        return "**Not concluded:** a comparison has only one seed per precision, so its spread is unknown."
    return (f"**{other} is within seed noise of fp32** on every metric of every comparison "
            "(no gap between the means exceeds the sum of the two seeds' standard deviations).")


# ---------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------

def _num(v, digits=2, scale=1.0):
    return "-" if v is None else f"{scale * v:.{digits}f}"


def _scale(metric):
    return (100.0, 2) if metric in reproduce.PERCENT_METRICS else (1.0, 3)


def report(results, argv, device_note, iterations=None):
    other = results[0]["precisions"][1]
    lines = [f"# {REFERENCE} vs {other}: paired runs", "",
             f"Written by `python benchmarks/precision.py{' ' if argv else ''}{' '.join(argv)}` "
             f"on {time.strftime('%Y-%m-%d')}: {device_note}.", ""]
    if iterations:
        lines += [f"**Smoke scale: every run was cut to {iterations:,} updates (`--iterations`).** These are NOT the "
                  "comparisons the module docstring lists, and say nothing about a full run.", ""]
    lines += [conclusion(results, other), "",
              "Rule (the README's, for claiming an ordering): a metric differs when the gap between the two "
              "precisions' means exceeds the sum of their seeds' sample standard deviations. Percent for "
              "accuracies and the FactorVAE score; MIG as a fraction.", ""]
    for r in results:
        seeds = r["seeds"]
        ups = sorted({u for p in r["precisions"] for u in r["updates"][p] if u is not None})
        lines += [f"## {r['name']}", "", f"{r['doc']}; seeds {' '.join(map(str, seeds))}; "
                  f"updates: {', '.join(f'{int(u):,}' for u in ups) or 'none finished'}.", ""]
        failed = [f"{p} seed {s}: {run['error']}" for (p, s), run in r["runs"].items() if run["status"] == "failed"]
        lines += [f"- FAILED {f}" for f in failed] + ([""] if failed else [])
        head = ["metric"] + [f"{p} s{s}" for p in r["precisions"] for s in seeds] + \
               [f"{p} mean +- std" for p in r["precisions"]] + ["gap", "sum of stds", "verdict"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for metric, m in r["metrics"].items():
            scale, digits = _scale(metric)
            cells = [metric] + [_num(v, digits, scale) for p in r["precisions"] for v in m["per"][p]]
            for p in r["precisions"]:
                mean, std = mean_std(m["per"][p])
                cells.append(_num(mean, digits, scale) + ("" if std is None else f" +- {_num(std, digits, scale)}"))
            gap, spread, word = m["verdicts"][other]
            cells += [_num(gap, digits, scale), _num(spread, digits, scale), word]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "Final loss terms (the last log.csv row: the mean of its logged updates):", ""]
        keys = []
        for run in r["runs"].values():
            keys += [k for k in final_terms(run["rows"]) if k not in keys]
        if keys:
            lines += ["| run | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
            for (p, s), run in r["runs"].items():
                terms = final_terms(run["rows"])
                if terms:
                    lines.append(f"| {p} s{s} | " + " | ".join(_num(terms.get(k), 4) for k in keys) + " |")
        else:
            lines.append("(no finished run)")
        gaps = ", ".join(f"seed {s}: {_num(g, 3)} %" for s, g in zip(seeds, r["curve"][other]))
        lines += ["", f"Loss curve, mean |{other} - fp32| over the logged updates, in % of the fp32 loss: {gaps}. "
                  f"Between fp32 seeds {seeds[0]} and {seeds[1] if len(seeds) > 1 else '-'} (a change of seed "
                  f"alone): {_num(r['seed_curve'], 3)} %."]
        speed = {p: mean_std(r["speed"][p])[0] for p in r["precisions"]}
        ratio = (speed[REFERENCE] / speed[other]) if speed[REFERENCE] and speed[other] else None
        lines += ["", "Training ms per update (evaluations excluded), mean over seeds: "
                  + ", ".join(f"{p} {_num(speed[p], 1)}" for p in r["precisions"])
                  + f"; {other} is {_num(ratio, 2)}x fp32's speed.", ""]
    return "\n".join(lines)


def device_description(device):
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
    else:
        name = f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
    return f"{name}, torch {torch.__version__}"


def check_args(args):
    if args.iterations is not None and args.iterations < 1:
        return f"--iterations {args.iterations}: give a number of updates >= 1."
    if args.seeds is not None and (len(args.seeds) < 1 or any(s < 0 for s in args.seeds)):
        return "--seeds: give integers >= 0."
    if args.time_budget is not None and not (math.isfinite(args.time_budget) and args.time_budget > 0):
        return f"--time-budget {args.time_budget:g}: give minutes per invocation, a finite number > 0."
    if args.jobs < 1 or (args.threads is not None and args.threads < 1):
        return "--jobs and --threads: give integers >= 1."
    return None


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description="fp32 against bf16/fp16 on the same protocols and seeds.")
    p.add_argument("--only", nargs="+", choices=sorted(COMPARISONS), help="these comparisons (default all)")
    p.add_argument("--against", choices=["bf16", "fp16"], default="bf16")
    p.add_argument("--seeds", type=int, nargs="+", help="override every comparison's seeds")
    p.add_argument("--iterations", type=int, help="cut every run to N updates (smoke scale, said in the report)")
    p.add_argument("--data-dir", default=os.path.join(ROOT, "..", "shared", "data"))
    p.add_argument("--device", default="auto")
    p.add_argument("--runs-dir", default=os.path.join(ROOT, "runs"))
    p.add_argument("--out", default=os.path.join(ROOT, "results", "precision.md"))
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--threads", type=int)
    p.add_argument("--time-budget", type=float, metavar="MINUTES")
    p.add_argument("--collect-only", action="store_true")
    p.add_argument("--device-note", metavar="TEXT",
                   help="where the runs ran, for the report's header when it is written elsewhere "
                        "(default: the device --device finds here)")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="after --: flags passed to every script")
    args = p.parse_args(argv)
    problem = check_args(args)
    if problem:
        print(f"precision.py: error: {problem}", file=sys.stderr)
        return 2
    names = args.only or list(COMPARISONS)
    precisions = [REFERENCE, args.against]
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    failures = {}
    if not args.collect_only:
        todo = commands(names, precisions, args.seeds, args, extra)
        for cmd, _ in todo:
            print(" ".join(["python"] + [c.replace(ROOT + os.sep, "") for c in cmd[1:]]), flush=True)
        if args.dry_run:
            return 0
        threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
        with reproduce.forwarding_stop_signals():
            reproduce._run_all(todo, args.jobs, threads, failures)
            stopped = reproduce.stop_signal()
        if stopped:
            print(f"precision.py: stopped by {stopped}; the same command continues the runs exactly.", flush=True)
            return 128 + int(getattr(signal, stopped))
    try:
        results = [collect(name, precisions, args.seeds, args.runs_dir) for name in names]
    except reproduce.ReleaseError as err:                  # a damaged log.csv: one sentence
        print(f"precision.py: error: {err}", file=sys.stderr)
        return 1
    shown = list(argv)                     # the note is printed once, after the command
    if args.device_note and "--device-note" in shown:
        shown[shown.index("--device-note") + 1] = '"..."'
    text = report(results, shown, args.device_note or device_description(args.device), args.iterations)
    reproduce.releaser.atomic_write(args.out, lambda f: f.write(text + "\n"))
    print(text)
    print(f"wrote {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
