"""Write a student copy of the repository: every marked solution region replaced by a
`raise NotImplementedError("<equation>, return <what>")`.

    python assignments/make.py OUT [--methods jointvae btcvae cascadevae metrics]
                                   [--only FUNCTION ...]

OUT is a plain folder (no git history). It holds the method files with the chosen
regions removed (the other regions stay, as given code, without their markers), the
shared modules, the public tests (tests/test_<module>_public.py from assignments/public/,
plus those of the repository's tests that neither name a removed function nor import a
left-out file) and the notebooks that call no removed function, with their outputs
cleared. It never holds assignments/ (grading tests, points, this tool) or the
repository's tests and notebooks that check a removed function against its closed form.

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
# test_notebooks.py expects all five notebooks, test_reproduce.py trains in subprocesses.
PUBLIC_REPO_TESTS = ("test_data.py", "test_nets.py", "test_viz.py", "test_runs.py")
STUDENT_CONFTEST = os.path.join(PUBLIC_DIR, "conftest_student.py")
MARKER_FILE = "ASSIGNMENT.md"
MARKER_LINE = "<!-- written by assignments/make.py -->"
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


def prepare_out(out, root):
    out = os.path.abspath(out)
    if out == root or out.startswith(root + os.sep):
        raise SystemExit(f"make.py: error: OUT {out} is inside the repository; write the student copy elsewhere "
                         "(e.g. /tmp/hw).")
    if os.path.isdir(out) and os.listdir(out):
        if not os.path.isfile(os.path.join(out, MARKER_FILE)) or \
                MARKER_LINE not in open(os.path.join(out, MARKER_FILE), encoding="utf-8").read():
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


def make(out, methods=None, only=(), root=ROOT, log=print):
    """Write the student copy; returns a dict of what went where. SystemExit on any error."""
    methods = list(methods or rg.SOLUTION_FILES)
    try:
        all_regs = rg.all_regions(root)                          # every region: also the public-line baseline
        removed = rg.select([r for r in all_regs if r.module in methods], list(only))
    except (rg.RegionError, ValueError) as err:
        raise SystemExit(f"make.py: error: {err}")
    if not removed:
        raise SystemExit(f"make.py: error: the files of {', '.join(methods)} have no solution regions.")
    out = prepare_out(out, root)
    left_out_methods = [m for m in rg.SOLUTION_FILES if m not in methods and m != "metrics"]
    skipped_files = {rg.SOLUTION_FILES[m] for m in left_out_methods}
    present_modules = {os.path.splitext(f)[0] for f in os.listdir(root) if f.endswith(".py")} - set(left_out_methods)
    removed_names = sorted({r.function for r in removed})
    held_back = []

    for rel in repo_files(root):
        top = rel.split("/", 1)[0]
        if top in ("assignments", "tests", "notebooks") or rel in skipped_files or rel.startswith(".git"):
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

    # notebooks: only those that call no removed function, outputs cleared
    nb_dir = os.path.join(root, "notebooks")
    for name in sorted(os.listdir(nb_dir)) if os.path.isdir(nb_dir) else []:
        if not name.endswith(".ipynb"):
            continue
        nb, code = notebook_code(os.path.join(nb_dir, name))
        missing = sorted(set(IMPORT.findall(code)) & (set(SOURCE_MODULES) - present_modules))
        if names_in(code, removed_names) or missing:
            held_back.append(f"notebooks/{name}")
        else:
            write(os.path.join(out, "notebooks", name), cleared(nb))

    write(os.path.join(out, MARKER_FILE), student_readme(out, removed, methods, held_back))

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
    log(f"wrote {out}: {len(removed)} function(s) to implement, {len(held_back)} test file(s)/notebook(s) "
        f"held back{' (' + ', '.join(sorted(skipped_files)) + ' left out)' if skipped_files else ''}")
    for r in removed:
        log(f"  {r.qualname:<36} {r.equation}")
    return dict(out=out, removed=[r.qualname for r in removed], held_back=held_back,
                left_out=sorted(skipped_files))


def student_readme(out, removed, methods, held_back):
    rows = []
    for r in removed:
        path = os.path.join(out, os.path.basename(r.path))
        with open(path, encoding="utf-8") as f:
            line = next(i for i, text in enumerate(f.read().split("\n"), 1)
                        if "raise NotImplementedError(" in text and r.qualname + ":" in text)
        what = r.text.split(", return", 1)[1].strip() if ", return" in r.text else "see the docstring"
        rows.append(f"| `{os.path.basename(r.path)}:{line}` | `{r.function}` | {r.equation} | {what} |")
    held = "\n".join(f"- `{h}`" for h in held_back) or "- nothing"
    return f"""{MARKER_LINE}
# Assignment

Implement the functions below. Each one's body is a single
`raise NotImplementedError("...")`; its docstring says what it takes and returns, the
comments around it and the file's docstring say how it is used, and the equation is in the
paper the file's docstring names. Keep the signatures: the grader calls them as they are.

| where | function | equation | return |
| --- | --- | --- | --- |
{chr(10).join(rows)}

Check your work as you go:

```bash
python -m pytest tests -q
```

A public test that reaches a function you have not written yet is skipped, and says which
one ("not implemented yet: ..."); the tests check imports, signatures, shapes and that a
short training run goes through, not the values: the graded tests are kept by your
instructor. Once the losses are written the scripts train as usual, e.g.
`python {rg.SOLUTION_FILES[next((m for m in methods if m != "metrics"), "btcvae")]} --dataset shapes --iterations 200`.

Held back from this copy (they check the answers, or need files it does not have):
{held}
"""


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    make(args.out, args.methods, args.only)


if __name__ == "__main__":
    main()
