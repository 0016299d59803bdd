"""Write a student copy of the repository: every marked solution region replaced by a
`raise NotImplementedError("<equation>, return <what>")`.

    python assignments/make.py OUT [--methods jointvae btcvae cascadevae metrics]
                                   [--only FUNCTION ...]

OUT is a plain folder (no git history) with only what a student needs: the method files
with the chosen regions removed (the other regions stay, as given code, without their
markers), the shared modules they import, the top-level files (requirements.txt,
pytest.ini), the public tests (tests/test_<module>_public.py from assignments/public/, plus
those of the repository's tests that neither name a removed function nor import a
left-out file), the notebooks that call no removed function (outputs cleared), a
README.md that is the assignment, and assignment.json, the record grade.py reads: methods,
--only, the functions removed with their points, the repository commit. It never holds
assignments/ (grading tests, points, this tool), the repository's README, results/,
benchmarks/ (unless the copied code imports it), .ci/ or .git, or the repository's
tests and notebooks that check a removed function against its closed form.

--methods picks the files of the assignment: a method file not named is left out of
OUT altogether (jointvae.py's reparameterize is btcvae.py's, so handing out one
solved file would hand out the other's answer); metrics.py, needed by all three, is
copied whole when "metrics" is not named. --only narrows the removed regions to the
named functions ("btcvae.log_qz_mws", or a bare "reparameterize" for every file's).

Before it finishes, make.py checks that no line of a removed region appears anywhere in
OUT (lines that also occur outside every region of the source modules, such as
`batch = x.shape[0]`, are not secrets); on a leak it deletes OUT and names the lines.
Standard library only.
"""

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import regions as rg  # noqa: E402

PUBLIC_DIR = os.path.join(HERE, "public")
# The repository's own tests that may go to students: they test data, networks, figures and
# run folders, not the equations (a training run in them skips until the loss is written).
# test_notebooks.py expects all the notebooks, test_reproduce.py trains in subprocesses.
PUBLIC_REPO_TESTS = ("test_data.py", "test_nets.py", "test_viz.py", "test_runs.py")
STUDENT_CONFTEST = os.path.join(PUBLIC_DIR, "conftest_student.py")
MANIFEST = "assignment.json"                                 # what the copy was made with: grade.py reads it
MADE_BY = "assignments/make.py"
README = "README.md"                                         # the student's README is the assignment
LEGACY_MARKER = ("ASSIGNMENT.md", "<!-- written by assignments/make.py -->")  # copies of earlier versions
POINTS = os.path.join(HERE, "points.json")
# Top-level folders never copied (a folder the copied code imports is copied, unless listed here).
# Names in a notebook's code that read what NEVER_COPY leaves out: released weights, benchmarks/.
NOTEBOOK_NEEDS_UNCOPIED = ("read_manifest", "pretrained_path", "benchmarks")
NEVER_COPY = {"assignments", "tests", "notebooks", "results", ".git", ".ci", ".github"}
KEEP_DOTFILES = {".gitignore"}
SOURCE_MODULES = ("jointvae", "btcvae", "cascadevae", "metrics", "data", "nets", "runs", "viz")
TEXT_EXT = {".py", ".md", ".txt", ".ipynb", ".json", ".csv", ".ini", ".cfg", ".toml", ".yml", ".yaml",
            ".sh", ".rst", ""}
IMPORT = re.compile(r"^\s*(?:import|from)\s+(\w+)", re.M)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="make.py", description=__doc__.split("\n\n")[0])
    p.add_argument("out", metavar="OUT", help="folder to write the student copy to (new, or an earlier copy)")
    p.add_argument("--methods", nargs="+", choices=list(rg.SOLUTION_FILES), default=list(rg.SOLUTION_FILES),
                   help="files of the assignment (default: all four)")
    p.add_argument("--only", nargs="+", metavar="FUNCTION", default=[],
                   help="remove only these functions' regions (default: every region of --methods)")
    return p.parse_args(argv)


def repo_files(root):
    """Relative paths of the repository's files: git's tracked and untracked-but-not-ignored
    ones when root is a git checkout, else a walk that skips the usual build output."""
    try:
        out = subprocess.run(["git", "-C", root, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, check=True).stdout.decode()
        files = sorted({f for f in out.split("\0") if f})
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", "__pycache__", ".pytest_cache", ".ipynb_checkpoints", "runs", "data", ".venv", ".ci-venv"}
        files = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in skip)
            files += [os.path.relpath(os.path.join(dirpath, f), root) for f in sorted(filenames)
                      if not f.endswith(".pyc")]
    return [f for f in files if os.path.isfile(os.path.join(root, f))]


def normalized(line):
    """The forms a copied line can take: the stripped line, and its code without a trailing comment."""
    s = line.strip()
    if not s:
        return set()
    forms = {s}
    if not s.startswith("#") and "#" in s:
        code = s.split("#", 1)[0].rstrip()
        if code:
            forms.add(code)
    return forms


def text_lines(path):
    """Lines of a text file; a notebook's cell sources; None for a binary file."""
    if os.path.splitext(path)[1] not in TEXT_EXT:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        return None
    if path.endswith(".ipynb"):
        try:
            nb = json.loads(text)
            return [line for cell in nb.get("cells", []) for line in "".join(cell.get("source", "")).split("\n")]
        except ValueError:
            pass
    return text.split("\n")


def names_in(text, functions):
    """Which of `functions` (bare names) `text` mentions as a word."""
    return sorted(f for f in functions if re.search(rf"\b{re.escape(f)}\b", text))


def notebook_code(path):
    with open(path, encoding="utf-8") as f:
        nb = json.load(f)
    return nb, "\n".join("".join(c.get("source", "")) for c in nb["cells"] if c.get("cell_type") == "code")


def cleared(nb):
    for cell in nb["cells"]:
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def secret_lines(root, all_regs, removed):
    """Normalised lines of the removed regions that the student copy must not contain."""
    public = set()
    for module in SOURCE_MODULES:
        path = os.path.join(root, module + ".py")
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        inside = set()
        for r in (r for r in all_regs if os.path.abspath(r.path) == os.path.abspath(path)):
            inside.update(range(r.begin, r.end + 1))
        for i, line in enumerate(lines):
            if i not in inside:
                public |= normalized(line)
    secrets = {}
    for r in removed:
        for line in r.body:
            for form in normalized(line) - public:
                secrets.setdefault(form, r.qualname)
    return secrets


def leaks(out, secrets):
    found = []
    for dirpath, _, filenames in os.walk(out):
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            lines = text_lines(path)
            for i, line in enumerate(lines or []):
                for form in normalized(line):
                    if form in secrets:
                        found.append(f"{os.path.relpath(path, out)}:{i + 1} repeats a line of {secrets[form]}: {form}")
                        break
    return found


def made_by_make(out):
    """Whether the folder `out` is a student copy make.py wrote: its assignment.json, the first
    line of its README.md, or the ASSIGNMENT.md marker of copies made before either."""
    try:
        with open(os.path.join(out, MANIFEST), encoding="utf-8") as f:
            if json.load(f).get("made_by") == MADE_BY:
                return True
    except (OSError, ValueError, AttributeError):
        pass
    try:
        with open(os.path.join(out, README), encoding="utf-8") as f:
            if f.readline().startswith(f"<!-- written by {MADE_BY}"):
                return True
    except (OSError, UnicodeDecodeError):
        pass
    name, line = LEGACY_MARKER
    try:
        with open(os.path.join(out, name), encoding="utf-8") as f:
            return line in f.read()
    except (OSError, UnicodeDecodeError):
        return False


def prepare_out(out, root):
    out = os.path.abspath(out)
    if out == root or out.startswith(root + os.sep):
        raise SystemExit(f"make.py: error: OUT {out} is inside the repository; write the student copy elsewhere "
                         "(e.g. /tmp/hw).")
    if os.path.isdir(out) and os.listdir(out):
        if not made_by_make(out):
            raise SystemExit(f"make.py: error: {out} exists and is not a student copy make.py wrote; "
                             "name a new folder.")
        shutil.rmtree(out)
    elif os.path.exists(out) and not os.path.isdir(out):
        raise SystemExit(f"make.py: error: {out} is a file; name a folder.")
    os.makedirs(out, exist_ok=True)
    return out


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def load_points(functions, path=POINTS):
    """{function: points} for `functions`; SystemExit naming any that points.json leaves out."""
    with open(path, encoding="utf-8") as f:
        points = json.load(f)
    missing = [q for q in functions if q not in points]
    if missing:
        raise SystemExit(f"make.py: error: {path} gives no points to {', '.join(missing)}; add them.")
    return {q: points[q] for q in functions}


def repo_commit(root):
    """(commit, dirty) of the checkout at root: dirty when tracked files differ from the commit;
    (None, None) when root is not a git checkout."""
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        status = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, check=True).stdout
        return head or None, bool(status.strip())
    except (OSError, subprocess.CalledProcessError):
        return None, None


def imported_dirs(root, files, modules):
    """Top-level folders of the repository that the copied modules import (transitively), e.g. a
    package `utils/`; the rest (benchmarks/, results/, ...) stays out of the copy."""
    tops = {f.split("/", 1)[0] for f in files if "/" in f} - NEVER_COPY
    todo = [f"{m}.py" for m in modules]
    seen, wanted = set(todo), set()
    while todo:
        rel = todo.pop()
        try:
            with open(os.path.join(root, rel), encoding="utf-8") as f:
                names = set(IMPORT.findall(f.read()))
        except (OSError, UnicodeDecodeError):
            continue
        for name in sorted((names & tops) - wanted):
            wanted.add(name)
            new = [f for f in files if f.startswith(name + "/") and f.endswith(".py") and f not in seen]
            seen.update(new)
            todo += new
    return wanted


def make(out, methods=None, only=(), root=ROOT, log=print):
    """Write the student copy; returns a dict of what went where (with the manifest written to
    OUT/assignment.json). SystemExit on any error."""
    methods = list(dict.fromkeys(methods or rg.SOLUTION_FILES))
    try:
        all_regs = rg.all_regions(root)                          # every region: also the public-line baseline
        removed = rg.select([r for r in all_regs if r.module in methods], list(only))
    except (rg.RegionError, ValueError) as err:
        raise SystemExit(f"make.py: error: {err}")
    if not removed:
        raise SystemExit(f"make.py: error: the files of {', '.join(methods)} have no solution regions.")
    points = load_points([r.qualname for r in removed])
    out = prepare_out(out, root)
    left_out_methods = [m for m in rg.SOLUTION_FILES if m not in methods and m != "metrics"]
    skipped_files = {rg.SOLUTION_FILES[m] for m in left_out_methods}
    present_modules = {os.path.splitext(f)[0] for f in os.listdir(root) if f.endswith(".py")} - set(left_out_methods)
    removed_names = sorted({r.function for r in removed})
    held_back = []

    files = repo_files(root)
    dirs = imported_dirs(root, files, present_modules)
    for rel in files:
        top = rel.split("/", 1)[0]
        if "/" in rel:
            if top not in dirs:
                continue                                     # results/, benchmarks/, .ci/, tests/, notebooks/
        elif rel == README or rel in skipped_files or (rel.startswith(".") and rel not in KEEP_DOTFILES):
            continue
        src, dst = os.path.join(root, rel), os.path.join(out, rel)
        module = os.path.splitext(rel)[0]
        if rel in rg.SOLUTION_FILES.values():
            with open(src, encoding="utf-8") as f:
                lines = f.read().split("\n")
            regs = [r for r in all_regs if r.module == module]
            write(dst, "\n".join(rg.strip(lines, regs, [r for r in removed if r.module == module])))
        else:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy2(src, dst)

    # tests: the repository's conftest plus the skip-until-written hook, the public tests
    with open(os.path.join(root, "tests", "conftest.py"), encoding="utf-8") as f:
        conftest = f.read().rstrip("\n")
    with open(STUDENT_CONFTEST, encoding="utf-8") as f:
        conftest += "\n\n\n" + f.read()
    write(os.path.join(out, "tests", "conftest.py"), conftest)
    for module in sorted({r.module for r in removed}):
        public = os.path.join(PUBLIC_DIR, f"test_{module}_public.py")
        shutil.copy2(public, os.path.join(out, "tests", os.path.basename(public)))
    for name in sorted(os.listdir(os.path.join(root, "tests"))):
        if not name.startswith("test_") or not name.endswith(".py"):
            continue
        with open(os.path.join(root, "tests", name), encoding="utf-8") as f:
            text = f.read()
        missing = sorted(set(IMPORT.findall(text)) & (set(SOURCE_MODULES) - present_modules))
        if name in PUBLIC_REPO_TESTS and not names_in(text, removed_names) and not missing:
            shutil.copy2(os.path.join(root, "tests", name), os.path.join(out, "tests", name))
        else:
            held_back.append(f"tests/{name}")

    # notebooks: only those that call no removed function and read nothing the copy leaves out
    # (released weights in results/, benchmarks/), outputs cleared; with their helper _checked.py
    nb_dir = os.path.join(root, "notebooks")
    for name in sorted(os.listdir(nb_dir)) if os.path.isdir(nb_dir) else []:
        if not name.endswith(".ipynb"):
            continue
        nb, code = notebook_code(os.path.join(nb_dir, name))
        missing = sorted(set(IMPORT.findall(code)) & (set(SOURCE_MODULES) - present_modules))
        if names_in(code, removed_names) or missing or names_in(code, NOTEBOOK_NEEDS_UNCOPIED):
            held_back.append(f"notebooks/{name}")
        else:
            write(os.path.join(out, "notebooks", name), cleared(nb))
    helper = os.path.join(nb_dir, "_checked.py")
    if os.path.isdir(os.path.join(out, "notebooks")) and os.path.isfile(helper):
        shutil.copy2(helper, os.path.join(out, "notebooks", "_checked.py"))

    commit, dirty = repo_commit(root)
    copied = {os.path.splitext(f)[0] for f in os.listdir(out) if f.endswith(".py")}
    manifest = dict(
        made_by=MADE_BY, format=1, commit=commit, dirty=dirty, methods=methods, only=list(only),
        functions=[dict(function=r.qualname, equation=r.equation, points=points[r.qualname]) for r in removed],
        max_score=sum(points.values()),
        given=[r.qualname for r in all_regs if r.module in copied and r not in removed],
        left_out=sorted(skipped_files), held_back=held_back)
    write(os.path.join(out, MANIFEST), json.dumps(manifest, indent=1) + "\n")
    write(os.path.join(out, README), student_readme(out, removed, points, manifest, root))

    bad = []
    for dirpath, _, filenames in os.walk(out):
        for name in filenames:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                try:
                    compile(open(path, encoding="utf-8").read(), path, "exec")
                except SyntaxError as err:
                    bad.append(f"{os.path.relpath(path, out)}: {err}")
    found = leaks(out, secret_lines(root, all_regs, removed))
    if bad or found:
        shutil.rmtree(out)
        raise SystemExit("make.py: error: the student copy would not be safe to hand out, so it was deleted:\n  "
                         + "\n  ".join(bad + found)
                         + "\nRemove the repeated lines, add the function that repeats them to --only, or leave "
                           "its file out with --methods.")
    log(f"wrote {out}: {len(removed)} function(s) to implement ({manifest['max_score']:g} points), "
        f"{len(held_back)} test file(s)/notebook(s) held back"
        f"{' (' + ', '.join(sorted(skipped_files)) + ' left out)' if skipped_files else ''}")
    for r in removed:
        log(f"  {r.qualname:<36} {r.equation:<48} {points[r.qualname]:g}")
    return dict(out=out, removed=[r.qualname for r in removed], held_back=held_back,
                left_out=sorted(skipped_files), manifest=manifest)


# --------------------------------------------------------------------------- the student's README


def md_cell(text):
    """Text for one cell of a Markdown table: `|` escaped (also inside code spans, as GitHub
    reads tables), no line breaks."""
    return " ".join(str(text).split()).replace("|", "\\|")


def module_summary(path):
    """(first line of the module docstring, the paper it names or "")."""
    with open(path, encoding="utf-8") as f:
        try:
            doc = ast.get_docstring(ast.parse(f.read())) or ""
        except SyntaxError:
            doc = ""
    first = doc.split("\n", 1)[0].strip()
    m = re.search(r"Paper:\s*(.+?)(?:\s*\(text in|\n[ \t]*\n|$)", doc, re.S)
    return first, (" ".join(m.group(1).split()) if m else "")


FOLDER_NOTES = {
    "tests": "the public tests (run them with `python -m pytest tests -q`)",
    "notebooks": "notebooks that use only code you are given or have written",
    "requirements.txt": "the Python packages to install (`pip install -r requirements.txt`)",
    "pytest.ini": "pytest settings",
    ".gitignore": "what git leaves out if you keep your work in git (data, runs)",
    MANIFEST: "what this copy was made with; the grader reads it: do not edit it",
    README: "this file",
}


def student_readme(out, removed, points, manifest, root):
    mine = sorted({os.path.basename(r.path) for r in removed}, key=lambda f: list(rg.SOLUTION_FILES.values()).index(f))
    rows = []
    for r in removed:
        name = os.path.basename(r.path)
        with open(os.path.join(out, name), encoding="utf-8") as f:
            line = next(i for i, text in enumerate(f.read().split("\n"), 1)
                        if "raise NotImplementedError(" in text and r.qualname + ":" in text)
        what = r.text.split(", return", 1)[1].strip() if ", return" in r.text else "see the docstring"
        rows.append(f"| [`{name}`]({name}) line {line} | `{md_cell(r.function)}` | {md_cell(r.equation)} | "
                    f"{md_cell(what)} | {points[r.qualname]:g} |")
    papers = []
    for name in mine:
        first, paper = module_summary(os.path.join(out, name))
        papers.append(f"- [`{name}`]({name}): {first}" + (f" Paper: {paper}." if paper else ""))
    total = manifest["max_score"]
    given = [q for q in manifest["given"] if q.split(".")[0] in {os.path.splitext(f)[0] for f in mine}]
    given_text = (f"\nThe other marked functions of {'this file' if len(mine) == 1 else 'these files'} are given, "
                  "complete: "
                  + ", ".join(f"`{q.split('.', 1)[1]}`" if len(mine) == 1 else f"`{q}`" for q in given)
                  + ". Read them; they are not graded.\n") if given else ""
    scripts = [f for f in mine if f != rg.SOLUTION_FILES["metrics"]]
    train = ("\nOnce the functions are written the scripts train as usual, e.g.\n\n```bash\n"
             + "\n".join(f"python {f} --dataset shapes --iterations 200" for f in scripts)
             + "\n```\n") if scripts else ""
    public = sorted(f for f in os.listdir(os.path.join(out, "tests")) if f.endswith("_public.py"))
    listing = []
    for entry in sorted(os.listdir(out), key=lambda e: (e.startswith("."), e.lower())):
        path = os.path.join(out, entry)
        if entry.endswith(".py"):
            note = module_summary(path)[0]
            if entry in mine:
                note += " **You write parts of this file.**"
        else:
            note = FOLDER_NOTES.get(entry, "")
        label = entry + ("/" if os.path.isdir(path) else "")
        listing.append(f"- [`{label}`]({entry}){': ' + note if note else ''}")
    made = f" from commit `{manifest['commit'][:12]}`" if manifest.get("commit") else ""
    return f"""<!-- written by {MADE_BY}{made}; assignment.json records what this copy was made with -->
# Assignment: {", ".join(f"`{f}`" for f in mine)}

Write the bodies of the {len(removed)} function(s) below ({total:g} points in all). Each body is now
a single `raise NotImplementedError("...")`: replace that line with your code. The function's
docstring says what it takes and returns, the comments around it and the file's docstring
say how it is used, and the equation is in the paper the file's docstring names:

{chr(10).join(papers)}

| where | function | equation | returns | points |
| --- | --- | --- | --- | --- |
{chr(10).join(rows)}
{given_text}
Keep the names and signatures (the grader calls the functions as they are), write your code
only in these functions (helpers of your own are fine), and do not edit `{MANIFEST}`.

## Check your work

```bash
pip install -r requirements.txt      # once
python -m pytest tests -q
```

The public tests ({", ".join(f"`tests/{p}`" for p in public)}) check that the files
import, that the functions keep their signatures and return the documented shapes, and a few
properties any correct answer has (limits, bounds, invariances); a short training run goes
through once the loss is written. A test that reaches a function you have not written yet
is *skipped* and names it ("not implemented yet: ..."). Passing them does not mean full
marks: they do not check the values.
{train}
## Grading

Your instructor runs hidden grading tests on your copy. They check each function's values
against the paper's equations (closed forms, sums written out, distributions of random
samples, gradients), never how you lay the computation out: any correct way of writing it
passes. A function earns its points when all of its grading tests pass, else none; the
total is out of {total:g}. A function that calls another one you write is graded with a
reference version of the other, so one mistake costs only its own function's points. The
report names, for each failed function, the test and the value it got and expected.

## What is in this folder

{chr(10).join(listing)}
"""


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    make(args.out, args.methods, args.only)


if __name__ == "__main__":
    main()
