"""Grade a student copy: run the grading tests (assignments/grading) against REPO and print
one row per marked function: equation, function, points, passed/failed, and the first
line of the first failure.

    python assignments/grade.py [REPO] [--methods ...] [--only FUNCTION ...] [--json PATH]

REPO defaults to this repository (the solution: every row passes). A function passes when
all of its grading tests pass; it then earns the points assignments/points.json gives it.
The exit status is 0 only when every graded function passes. The list of functions and
their equations come from the solution regions of this repository (regions.py), so the
grader needs nothing from the student's copy but its code.
"""

import argparse
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GRADING = os.path.join(HERE, "grading")
POINTS = os.path.join(HERE, "points.json")
sys.path.insert(0, HERE)

import regions as rg  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(prog="grade.py", description=__doc__.split("\n\n")[0])
    p.add_argument("repo", metavar="REPO", nargs="?", default=ROOT, help="the copy to grade (default: this repository)")
    p.add_argument("--methods", nargs="+", choices=list(rg.SOLUTION_FILES), default=None,
                   help="grade only these files' functions (as given to make.py)")
    p.add_argument("--only", nargs="+", metavar="FUNCTION", default=[],
                   help="grade only these functions (as given to make.py)")
    p.add_argument("--json", metavar="PATH", help="also write the table as JSON")
    p.add_argument("--test-timeout", type=float, default=120.0, help="seconds one grading test may take")
    return p.parse_args(argv)


def load_points(functions):
    with open(POINTS, encoding="utf-8") as f:
        points = json.load(f)
    missing = [q for q in functions if q not in points]
    if missing:
        raise SystemExit(f"grade.py: error: {POINTS} gives no points to {', '.join(missing)}; add them.")
    return points


def run_tests(repo, functions, timeout):
    """Run the grading tests in this process (pytest.main) and return their per-test records."""
    import pytest

    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.json")
        args = [GRADING, "-c", os.path.join(GRADING, "pytest.ini"), "--rootdir", GRADING, "-q", "--no-header",
                "-p", "no:cacheprovider", "--tb=no", "-rN", "--repo", repo, "--grade-report", report,
                "--functions", ",".join(functions), "--test-timeout", str(timeout)]
        code = pytest.main(args)
        if not os.path.exists(report):
            raise SystemExit(f"grade.py: error: the grading tests did not run (pytest exit status {int(code)}).")
        with open(report, encoding="utf-8") as f:
            return json.load(f)["results"]


def table(regions, points, records):
    rows = []
    for r in regions:
        mine = [x for x in records if x["function"] == r.qualname]
        failed = [x for x in mine if x["outcome"] != "passed"]
        passed = bool(mine) and not failed
        if not mine:
            message = "no grading test ran"
        elif failed:
            name = failed[0]["test"].split("::")[-1]
            message = f"{name}: {failed[0]['message']}"
        else:
            message = f"{len(mine)} test(s)"
        rows.append(dict(equation=r.equation, function=r.qualname, points=points[r.qualname],
                         earned=points[r.qualname] if passed else 0, result="passed" if passed else "failed",
                         message=message))
    return rows


def render(rows, width=110):
    head = ("equation", "function", "points", "result", "first failure")
    cells = [(x["equation"], x["function"], f"{x['earned']:g}/{x['points']:g}", x["result"],
              x["message"] if x["result"] == "failed" else "") for x in rows]
    widths = [max(len(head[i]), *(len(c[i]) for c in cells)) for i in range(4)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head[:4], widths)) + "  " + head[4],
             "  ".join("-" * w for w in widths) + "  " + "-" * 13]
    for c in cells:
        msg = c[4] if len(c[4]) <= width else c[4][:width - 3] + "..."
        lines.append("  ".join(v.ljust(w) for v, w in zip(c[:4], widths)) + "  " + msg)
    earned, total = sum(x["earned"] for x in rows), sum(x["points"] for x in rows)
    n_pass = sum(x["result"] == "passed" for x in rows)
    lines.append(f"score: {earned:g}/{total:g} points, {n_pass}/{len(rows)} functions passed")
    return "\n".join(lines)


def grade(repo=ROOT, methods=None, only=(), timeout=120.0):
    """(rows, all_passed) for the copy at `repo`."""
    repo = os.path.abspath(repo)
    try:
        regions = rg.select(rg.all_regions(ROOT, methods), list(only))
    except (rg.RegionError, ValueError) as err:
        raise SystemExit(f"grade.py: error: {err}")
    points = load_points([r.qualname for r in regions])
    records = run_tests(repo, [r.qualname for r in regions], timeout)
    rows = table(regions, points, records)
    return rows, all(x["result"] == "passed" for x in rows)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not os.path.isdir(args.repo):
        raise SystemExit(f"grade.py: error: {args.repo} is not a folder.")
    rows, ok = grade(args.repo, args.methods, args.only, args.test_timeout)
    print()
    print(f"grading {os.path.abspath(args.repo)}")
    print(render(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
