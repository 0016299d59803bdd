"""Grade a student copy: run the grading tests (assignments/grading) against REPO and print
one row per function the student had to write: equation, function, points, passed/failed,
and the first line of the first failure.

    python assignments/grade.py [REPO] [--results results.json] [--json table.json]
                                [--manifest assignment.json] [--methods ...] [--only FUNCTION ...]

The functions graded are those the copy was made to have written: make.py records them in
REPO/assignment.json (methods, --only, the functions removed and their points), so no flags
are needed. Functions handed out as given code are neither passed nor failed, and the
files left out of the copy are not graded; the maximum score is the points of the
functions removed. --methods / --only narrow that further. A folder without
assignment.json (this repository, where everything passes; a copy made before there was
one) is graded on every marked function of the method files it holds, narrowed by
--methods / --only as given to make.py.

A function passes when all of its grading tests pass; it then earns the points
assignments/points.json gives it. The exit status is 0 only when every graded function
passes. --results writes Gradescope's results.json (score, max_score, and one test per
function with its score and the full failure messages); --json writes the table with its
totals. The equations and points come from this repository (regions.py, points.json), so the
grader needs nothing from the student's copy but its code and its assignment.json; pass
--manifest the assignment.json of the copy you handed out when the student's may have been
edited.
"""

import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GRADING = os.path.join(HERE, "grading")
POINTS = os.path.join(HERE, "points.json")
MANIFEST = "assignment.json"
MADE_BY = "assignments/make.py"
sys.path.insert(0, HERE)

import regions as rg  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(prog="grade.py", description=__doc__.split("\n\n")[0])
    p.add_argument("repo", metavar="REPO", nargs="?", default=ROOT, help="the copy to grade (default: this repository)")
    p.add_argument("--manifest", metavar="PATH",
                   help=f"what the copy was made with (default: REPO/{MANIFEST}, written by make.py)")
    p.add_argument("--methods", nargs="+", choices=list(rg.SOLUTION_FILES), default=None,
                   help="grade only these files' functions")
    p.add_argument("--only", nargs="+", metavar="FUNCTION", default=[],
                   help="grade only these functions")
    p.add_argument("--results", metavar="PATH", help="write Gradescope's results.json here")
    p.add_argument("--json", metavar="PATH", help="write the table, with its totals, as JSON")
    p.add_argument("--test-timeout", type=float, default=120.0, help="seconds one grading test may take")
    return p.parse_args(argv)


def fail(message):
    raise SystemExit(f"grade.py: error: {message}")


def load_points(functions):
    with open(POINTS, encoding="utf-8") as f:
        points = json.load(f)
    missing = [q for q in functions if q not in points]
    if missing:
        fail(f"{POINTS} gives no points to {', '.join(missing)}; add them.")
    return points


def read_manifest(repo, path=None):
    """The copy's assignment.json as a dict, or None where there is none (path None: REPO's)."""
    explicit = path is not None
    path = path or os.path.join(repo, MANIFEST)
    if not os.path.isfile(path):
        if explicit:
            fail(f"{path} does not exist.")
        return None
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
        assert manifest.get("made_by") == MADE_BY and isinstance(manifest.get("functions"), list)
        [f["function"] for f in manifest["functions"]]
    except (ValueError, AssertionError, AttributeError, KeyError, TypeError):
        fail(f"{path} is not an assignment.json written by make.py; pass --manifest the one of the copy "
             "you handed out, or grade with --methods / --only.")
    return manifest


def choose(repo, manifest=None, methods=None, only=()):
    """(regions to grade, notes): the functions the copy was made to have written (manifest),
    or every marked function of the method files REPO holds; narrowed by methods / only."""
    try:
        regions = rg.all_regions(ROOT)
        wanted = rg.select([r for r in regions if methods is None or r.module in methods], list(only))
    except (rg.RegionError, ValueError) as err:
        fail(str(err))
    notes = []
    if manifest is not None:
        handed = [f["function"] for f in manifest["functions"]]
        known = {r.qualname for r in regions}
        unknown = [q for q in handed if q not in known]
        if unknown:
            fail(f"the copy was made to have {', '.join(unknown)} written, which this repository does not mark "
                 f"(made from commit {manifest.get('commit') or 'unknown'}); grade with that version.")
        chosen = [r for r in regions if r.qualname in handed and r in wanted]
        dropped = [q for q in handed if q not in {r.qualname for r in chosen}]
        if dropped:
            notes.append(f"not graded (narrowed by --methods/--only): {', '.join(dropped)}")
        extra = [r.qualname for r in wanted if r.qualname not in handed and (methods or only)]
        if extra:
            notes.append(f"not graded (not written by the student: given code or left out): {', '.join(extra)}")
        if not handed:
            fail("the copy's assignment.json names no function to write.")
    else:
        present = [r for r in wanted if os.path.isfile(os.path.join(repo, os.path.basename(r.path)))]
        missing = sorted({os.path.basename(r.path) for r in wanted} - {os.path.basename(r.path) for r in present})
        if missing:
            notes.append(f"not graded (not in the copy): {', '.join(missing)}")
        chosen = present
        if os.path.abspath(repo) != ROOT:
            notes.append(f"no {MANIFEST} in the copy: every marked function of its method files is graded, "
                         "given code included; pass --methods / --only as given to make.py.")
    if not chosen:
        fail("no function to grade.")
    return chosen, notes


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
            fail(f"the grading tests did not run (pytest exit status {int(code)}).")
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
        tests = [dict(test=x["test"].split("::")[-1], phase=x.get("phase", "call"), outcome=x["outcome"],
                      message=x.get("detail") or x["message"]) for x in mine]
        rows.append(dict(equation=r.equation, function=r.qualname, points=points[r.qualname],
                         earned=points[r.qualname] if passed else 0, result="passed" if passed else "failed",
                         message=message, tests=tests))
    return rows


def totals(rows):
    return dict(score=sum(x["earned"] for x in rows), max_score=sum(x["points"] for x in rows),
                functions_passed=sum(x["result"] == "passed" for x in rows), functions_graded=len(rows))


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
    t = totals(rows)
    lines.append(f"score: {t['score']:g}/{t['max_score']:g} points, "
                 f"{t['functions_passed']}/{t['functions_graded']} functions passed")
    return "\n".join(lines)


def test_output(row):
    """One function's report for the student: every grading test, with the full message of each
    failure (the values got and expected)."""
    lines = [f"{row['function']} ({row['equation']}): {row['result']}, {row['earned']:g}/{row['points']:g} points"]
    if not row["tests"]:
        lines.append("no grading test ran")
    for t in row["tests"]:
        where = "" if t["phase"] == "call" else f" (in {t['phase']})"
        if t["outcome"] == "passed":
            lines.append(f"PASSED {t['test']}")
        else:
            lines.append(f"{t['outcome'].upper()} {t['test']}{where}:\n    " + t["message"].replace("\n", "\n    "))
    return "\n".join(lines)


def gradescope(rows, output, seconds):
    """Gradescope's results.json: the total and one test per graded function."""
    t = totals(rows)
    return dict(score=t["score"], max_score=t["max_score"], execution_time=round(seconds, 1), output=output,
                tests=[dict(name=f"{x['function']} ({x['equation']})", number=str(i), score=x["earned"],
                            max_score=x["points"], status=x["result"], output=test_output(x))
                       for i, x in enumerate(rows, 1)])


def grade(repo=ROOT, methods=None, only=(), timeout=120.0, manifest=None):
    """(rows, all_passed, notes) for the copy at `repo` (manifest: its assignment.json as a dict)."""
    repo = os.path.abspath(repo)
    regions, notes = choose(repo, manifest, methods, only)
    points = load_points([r.qualname for r in regions])
    if manifest is not None:
        promised = {f["function"]: f.get("points") for f in manifest["functions"]}
        changed = [r.qualname for r in regions if promised.get(r.qualname) != points[r.qualname]]
        if changed:
            notes.append(f"points.json now gives other points than the copy's {MANIFEST} to "
                         f"{', '.join(changed)}; graded with points.json's")
    records = run_tests(repo, [r.qualname for r in regions], timeout)
    rows = table(regions, points, records)
    return rows, all(x["result"] == "passed" for x in rows), notes


def write_json(path, data):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.write("\n")


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not os.path.isdir(args.repo):
        fail(f"{args.repo} is not a folder.")
    repo = os.path.abspath(args.repo)
    manifest = read_manifest(repo, args.manifest)
    start = time.time()
    rows, ok, notes = grade(repo, args.methods, args.only, args.test_timeout, manifest)
    head = [f"grading {repo}"]
    if manifest is not None:
        made = f" (commit {manifest['commit'][:12]})" if manifest.get("commit") else ""
        head.append(f"made by make.py{made} with --methods {' '.join(manifest.get('methods', []))}"
                    + (f" --only {' '.join(manifest['only'])}" if manifest.get("only") else ""))
    output = "\n".join(head + [render(rows)] + notes)
    print()
    print(output)
    if args.results:
        write_json(args.results, gradescope(rows, output, time.time() - start))
    if args.json:
        write_json(args.json, dict(repo=repo, **totals(rows), rows=rows, notes=notes))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
