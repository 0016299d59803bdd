"""Check that a committed run folder resumes bit-exactly with the current code, against the
code of an earlier commit: both continue a copy of the folder for --steps updates, then the
model, the Adam state, every RNG state and every log row (timing columns aside) must match.

    python benchmarks/check_resume.py results/runs/mnist-accuracy/cascadevae-s1 --against 1b9a4d4 \\
        --steps 70 -- --data-dir ../shared/data

Run it after any change to a training loop, runs.py or a model: an unfinished protocol run
is resumed across such changes, and its numbers are only worth anything if the slices
still equal one straight run.
"""

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = {"seconds", "img_per_s", "solve_ms"}


def continue_run(code_root, run, steps, extra):
    ckpt = torch.load(os.path.join(run, "checkpoint.pt"), map_location="cpu", weights_only=True)
    script = os.path.join(code_root, ckpt["method"] + ".py")
    cmd = [sys.executable, script, "--resume", run, "--iterations", str(ckpt["step"] + steps), "--no-eval",
           "--no-progress", "--save-every", str(10 ** 9)] + extra
    r = subprocess.run(cmd, cwd=code_root, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"check_resume.py: {script} failed: {(r.stderr or r.stdout).strip().splitlines()[-1]}")
    return torch.load(os.path.join(run, "checkpoint.pt"), map_location="cpu", weights_only=True)


def log_rows(run):
    with open(os.path.join(run, "log.csv"), newline="") as f:
        rows = [r for r in csv.reader(f) if r and not r[0].startswith("#")]
    keep = [i for i, c in enumerate(rows[0]) if c not in TIMING]
    return [[r[i] for i in keep] for r in rows]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run")
    p.add_argument("--against", required=True, help="the git revision whose code is the reference")
    p.add_argument("--steps", type=int, default=70)
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []    # after --: flags for both resumes
    a = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    a.extra = extra
    with tempfile.TemporaryDirectory() as tmp:
        old_code = os.path.join(tmp, "code")
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", old_code, a.against],
                       check=True, capture_output=True)
        try:
            ref, new = os.path.join(tmp, "ref"), os.path.join(tmp, "new")
            for dst in (ref, new):
                shutil.copytree(a.run, dst, ignore=shutil.ignore_patterns("stdout.log", ".lock"))
            ck_ref = continue_run(old_code, ref, a.steps, a.extra)
            ck_new = continue_run(ROOT, new, a.steps, a.extra)
        finally:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", old_code], capture_output=True)
        checks = {
            "step": ck_ref["step"] == ck_new["step"],
            "model": all(torch.equal(ck_ref["model"][k], ck_new["model"][k]) for k in ck_ref["model"]),
            "adam": all(torch.equal(v, ck_new["optimizer"]["state"][i][k])
                        for i, s in ck_ref["optimizer"]["state"].items() for k, v in s.items()),
            "rng": torch.equal(ck_ref["rng"]["torch"], ck_new["rng"]["torch"])
            and torch.equal(ck_ref["rng"]["numpy"], ck_new["rng"]["numpy"]),
            "log rows": log_rows(ref) == log_rows(new),
        }
    print(f"{a.run} continued {a.steps} updates to step {ck_new['step']} with {a.against} and with this checkout: "
          + ", ".join(f"{k} {'equal' if ok else 'DIFFERENT'}" for k, ok in checks.items()))
    raise SystemExit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
