"""The seven notebooks (00-06): committed executed, with outputs that match the code.

Every notebook in notebooks/ is committed *with* its outputs (figures and printed
numbers) and ends with a cell that calls `notebooks._checked.show_checked` on

    {"tolerance": {"rtol": .., "atol": ..}, "tolerance_per_key": {..}, "values": {..}}

the numbers its text relies on and the tolerance it states for them. That output has the
MIME type `application/vnd.dbte.checked+json` (CHECKED_MIME), which Jupyter, Colab and
GitHub do not render: a reader sees one short line. The tests

* check the committed files: executed top to bottom in one session, no error output,
  at least one figure, under 1 MB, exactly one checked output (in the last code cell,
  nothing skipped), and the generated Colab cells of notebooks/_setup_cell.py (title
  badge and first code cell; the repository URL is defined there only);
* re-execute every notebook (a fresh "python3" kernel via nbclient, CPU only, offline,
  working directory notebooks/) and compare its checked output with the committed one
  (`compare_checked`): a committed output that the code no longer reproduces fails, so
  stale outputs cannot be committed. 05_train_a_model trains for real here (a few minutes).

Data: 00_quickstart and 06_paper_figures read the MNIST test split from $DATA_DIR. The
kernel gets DATA_DIR=../shared/data (beside the repository root) when that folder exists,
as on CI and where the committed outputs were made. Elsewhere they run without it and
list the values they could not compute under "skipped"; only then may those values be
missing from the re-execution.

After changing a notebook or the code it runs, re-execute and save it with

    OMP_NUM_THREADS=1 python tests/test_notebooks.py 05_train_a_model  # or several names / no name: all

(the same execution as the test). If the "python3" kernel is missing, install it with
`python -m ipykernel install --sys-prefix --name python3` (as .ci/run does).
"""

import copy
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time

import nbclient
import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NB_DIR = os.path.join(ROOT, "notebooks")
EXPECTED = [
    "00_quickstart.ipynb",
    "01_propositions.ipynb",
    "02_tc_decomposition.ipynb",
    "03_jointvae_kl.ipynb",
    "04_cascade_assignment.ipynb",
    "05_train_a_model.ipynb",
    "06_paper_figures.ipynb",
]
# Whole-notebook budgets: hang guards, not speed tests. 00-04 and 06 take seconds to about a minute;
# 05 trains CascadeVAE for 400 updates (about 4 minutes on a busy 2-core CPU).
NOTEBOOK_TIMEOUT_S = {"05_train_a_model.ipynb": 1200}
DEFAULT_TIMEOUT_S = 400
MAX_BYTES = 1_000_000
CHECKED_MIME = "application/vnd.dbte.checked+json"
OLD_PREFIX = "CHECKED "            # the printed line of earlier versions: none may be left
# Real data for 00 and 06 (see the docstring): never required, used when it is there.
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")


def _load_setup_module():
    spec = importlib.util.spec_from_file_location("_setup_cell", os.path.join(NB_DIR, "_setup_cell.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


setup_cell = _load_setup_module()


def _read(name, nb_dir=NB_DIR):
    return nbformat.read(os.path.join(nb_dir, name), as_version=4)


def _stem(name):
    return name[:-len(".ipynb")]


# ---------------------------------------------------------------------------
# The CHECKED line and the comparison
# ---------------------------------------------------------------------------

def _stream_text(cell):
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream"
                   and o.get("name") == "stdout")


def _checked_outputs(cell):
    return [o for o in cell.get("outputs", []) if CHECKED_MIME in o.get("data", {})]


def read_checked(nb):
    """The dict the notebook's last code cell displayed as CHECKED_MIME (ValueError if none, several, or
    one in another cell)."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    if not code:
        raise ValueError("the notebook has no code cell")
    elsewhere = [i for i, c in enumerate(code[:-1]) if _checked_outputs(c)]
    if elsewhere:
        raise ValueError(f"code cells {elsewhere} display a {CHECKED_MIME} output; only the last code cell may")
    if any(l.startswith(OLD_PREFIX) for c in code for l in _stream_text(c).splitlines()):
        raise ValueError(f"a cell prints a line starting with {OLD_PREFIX!r}: use notebooks/_checked.py's show_checked")
    found = _checked_outputs(code[-1])
    if len(found) != 1:
        raise ValueError(f"its last code cell displayed {len(found)} {CHECKED_MIME} outputs (expected 1)")
    checked = found[0]["data"][CHECKED_MIME]
    if isinstance(checked, str):                   # a JSON mimetype may be stored as text
        checked = json.loads(checked)
    for key in ("tolerance", "values"):
        if key not in checked:
            raise ValueError(f"the checked dict has no {key!r}")
    return checked


def _tolerance(checked, key):
    tol = checked.get("tolerance_per_key", {}).get(key, checked["tolerance"])
    return float(tol["rtol"]), float(tol["atol"])


def _compare_value(key, old, new, rtol, atol, out):
    """Append to `out` a sentence for every leaf of `new` that is not `old` within atol + rtol |old|."""
    if isinstance(old, bool) or isinstance(new, bool) or isinstance(old, str) or isinstance(new, str) \
            or old is None or new is None:
        if old != new:
            out.append(f"{key}: committed {old!r}, re-executed {new!r}")
        return
    if isinstance(old, (int, float)) and isinstance(new, (int, float)):
        if not (math.isfinite(old) and math.isfinite(new)):
            if not (old == new or (math.isnan(old) and math.isnan(new))):
                out.append(f"{key}: committed {old!r}, re-executed {new!r}")
        elif abs(new - old) > atol + rtol * abs(old):
            out.append(f"{key}: committed {old!r}, re-executed {new!r} (|difference| {abs(new - old):.3g} > "
                       f"atol {atol:g} + rtol {rtol:g} x |committed|)")
        return
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            out.append(f"{key}: committed {len(old)} entries, re-executed {len(new)}")
            return
        for i, (a, b) in enumerate(zip(old, new)):
            _compare_value(f"{key}[{i}]", a, b, rtol, atol, out)
        return
    if isinstance(old, dict) and isinstance(new, dict):
        if sorted(old) != sorted(new):
            out.append(f"{key}: committed keys {sorted(old)}, re-executed keys {sorted(new)}")
            return
        for k in old:
            _compare_value(f"{key}.{k}", old[k], new[k], rtol, atol, out)
        return
    out.append(f"{key}: committed {old!r}, re-executed {new!r} (different types)")


def compare_checked(committed, fresh, may_skip=False):
    """Mismatches (a list of sentences; empty when the outputs are current) between the committed
    checked dict and a re-executed one: same tolerances, same keys, every value within
    |new - committed| <= atol + rtol |committed| (the key's tolerance_per_key entry, else the
    notebook's tolerance); non-numbers must be equal. A key the re-execution lists under "skipped"
    (files it could not get) passes only with may_skip (this machine cannot provide them either)."""
    out = []
    for part in ("tolerance", "tolerance_per_key"):
        if committed.get(part, {}) != fresh.get(part, {}):
            out.append(f"{part}: committed {committed.get(part)}, re-executed {fresh.get(part)}")
    old, new = committed["values"], fresh["values"]
    skipped = fresh.get("skipped") or {}
    for key in sorted(set(old) - set(new)):
        if key in skipped and may_skip:
            continue
        out.append(f"{key}: committed but no longer printed"
                   + (f" (skipped: {skipped[key]})" if key in skipped else ""))
    for key in sorted(set(new) - set(old)):
        out.append(f"{key}: printed but not in the committed outputs")
    for key in old:
        if key in new:
            rtol, atol = _tolerance(committed, key)
            _compare_value(key, old[key], new[key], rtol, atol, out)
    return out


# ---------------------------------------------------------------------------
# Executing a notebook (the tests and `python tests/test_notebooks.py NAME` share this)
# ---------------------------------------------------------------------------

def kernel_available():
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
        return True
    except NoSuchKernel:
        return False


def execution_env(tmp_dir):
    """The environment the kernel inherits: headless, CPU only, 05's training run in a temporary folder,
    and DATA_DIR=../shared/data where that folder exists (see the docstring)."""
    env = {"MPLBACKEND": "Agg", "CUDA_VISIBLE_DEVICES": "", "TRAIN_A_MODEL_OUT": os.path.join(tmp_dir, "train_a_model")}
    if os.path.isdir(SHARED_DATA):
        env["DATA_DIR"] = SHARED_DATA
    return env


def execute(nb, name):
    """Execute `nb` in place (fresh python3 kernel, working directory notebooks/); returns seconds.
    Raises nbclient's CellTimeoutError / CellExecutionError."""
    budget = NOTEBOOK_TIMEOUT_S.get(name, DEFAULT_TIMEOUT_S)
    deadline = []

    def cell_timeout(cell):
        # The whole notebook shares one budget: each cell may use what the earlier ones left.
        if not deadline:
            deadline.append(time.monotonic() + budget)
        return max(1, int(deadline[0] - time.monotonic()))

    t0 = time.monotonic()
    client = nbclient.NotebookClient(nb, timeout_func=cell_timeout, kernel_name="python3",
                                     resources={"metadata": {"path": NB_DIR}})
    client.execute()
    return time.monotonic() - t0


# ---------------------------------------------------------------------------
# The committed files
# ---------------------------------------------------------------------------

def test_the_notebooks_are_there():
    present = sorted(f for f in os.listdir(NB_DIR) if f.endswith(".ipynb"))
    assert present == EXPECTED, f"notebooks/ holds {present}; expected {EXPECTED}"
    assert sorted(f"{n}.ipynb" for n in setup_cell.NOTEBOOKS) == EXPECTED, \
        "notebooks/_setup_cell.py NOTEBOOKS must list every notebook"


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_is_committed_executed(name):
    """Valid nbformat, a title cell, executed top to bottom in one session, no errors, figures, < 1 MB."""
    size = os.path.getsize(os.path.join(NB_DIR, name))
    assert size < MAX_BYTES, f"{name} is {size:,} bytes; keep it under {MAX_BYTES:,} (PNG figures at dpi ~80)"
    nb = _read(name)
    nbformat.validate(nb)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.lstrip().startswith("# "), \
        f"{name}: the first cell must be a markdown title citing the paper"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", f"{name}: kernelspec must be python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    counts = [c.get("execution_count") for c in code]
    assert counts == list(range(1, len(code) + 1)), \
        f"{name}: execution counts {counts}: commit it executed top to bottom in one kernel (see this file's docstring)"
    errors = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
              and any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert not errors, f"{name}: cells {errors} have error outputs"
    images = sum(1 for c in code for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
    assert images >= 1, f"{name}: no figure in the committed outputs"
    checked = read_checked(nb)   # exactly one checked output, in the last code cell
    assert not checked.get("skipped"), \
        f"{name}: committed with values skipped ({checked['skipped']}); execute it where the data is (see the docstring)"


@pytest.mark.parametrize("name", EXPECTED)
def test_colab_cells_are_the_generated_ones(name):
    """Title badge and first code cell as notebooks/_setup_cell.py writes them (run it after editing it)."""
    nb = _read(name)
    stem = _stem(name)
    fresh = copy.deepcopy(nb)
    assert not setup_cell.rewrite(fresh, stem), \
        f"{name}: its Colab badge or setup cell differs from notebooks/_setup_cell.py; run `python notebooks/_setup_cell.py`"
    assert setup_cell.badge_markdown(stem) in nb.cells[0].source
    first_code = nb.cells[setup_cell.first_code_cell(nb)]
    assert first_code.source == setup_cell.setup_cell_source(stem)
    assert first_code.source.count('"google.colab" in sys.modules') == 1
    assert "torch" not in setup_cell.NOTEBOOKS[stem], "torch ships with Colab: never reinstall it"
    # The URL itself appears nowhere else in the notebook.
    others = [i for i, c in enumerate(nb.cells) if c is not first_code and setup_cell.REPO_URL in c.source]
    assert not others, f"{name}: cells {others} spell out the repository URL; it lives in notebooks/_setup_cell.py"
    # No notebook needs files outside the repository.
    shared = [i for i, c in enumerate(nb.cells) if "../shared" in c.source]
    assert not shared, f"{name}: cells {shared} refer to ../shared (outside the repository)"


def test_readme_notebooks_section_links_and_names_the_url_file():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    heads = re.findall(r"\n(#{2,3}) Notebooks\n", readme)
    assert len(heads) == 1, "README.md needs exactly one '## Notebooks' (or '### Notebooks') section"
    section = re.split(r"\n#{2,%d} " % len(heads[0]), readme.split(f"\n{heads[0]} Notebooks\n", 1)[1], 1)[0]
    assert "notebooks/_setup_cell.py" in section, "the Notebooks section must name the file that defines the URL"
    for name in EXPECTED:
        assert setup_cell.colab_url(_stem(name)) in section, f"README: no Colab link for {name}"


def test_setup_cell_on_a_simulated_colab(tmp_path):
    """The generated cell's Colab branch: clone (here: this repository by file://), pip, %cd."""
    if not kernel_available():
        pytest.skip('no "python3" Jupyter kernel')
    if subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout with a commit to clone")
    clone_parent = str(tmp_path / "content")
    source = setup_cell.setup_cell_source("00_quickstart", repo_url=f"file://{ROOT}", clone_parent=clone_parent)
    clone = os.path.join(clone_parent, os.path.basename(ROOT))
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    nb.cells = [
        nbformat.v4.new_code_cell("import sys, types\nsys.modules['google.colab'] = types.ModuleType('google.colab')"),
        nbformat.v4.new_code_cell(source),
        nbformat.v4.new_code_cell("import json, os, jointvae\n"
                                  "print(json.dumps([ROOT, os.getcwd(), os.path.dirname(jointvae.__file__)]))"),
    ]
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    root, cwd, module_dir = json.loads(_stream_text(nb.cells[2]).strip().splitlines()[-1])
    real = os.path.realpath
    assert real(root) == real(cwd) == real(module_dir) == real(clone), (root, cwd, module_dir, clone)


def test_setup_cell_outside_colab_only_sets_sys_path():
    """Outside Colab the cell clones nothing, installs nothing, changes no directory: it puts this
    checkout's root on sys.path. (IPython turns the Colab branch's ! and % lines into calls that
    never run here.)"""
    from IPython.core.inputtransformer2 import TransformerManager

    python = TransformerManager().transform_cell(setup_cell.setup_cell_source("00_quickstart"))
    for call in ("get_ipython().system(", "run_line_magic('pip'", "run_line_magic('cd'"):
        assert call in python, f"the Colab branch lost {call!r}:\n{python}"
    cwd, path, ns = os.getcwd(), list(sys.path), {}
    try:
        os.chdir(NB_DIR)
        sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != os.path.realpath(ROOT)]
        exec(compile(python, "setup_cell", "exec"), ns)   # get_ipython is not defined: any magic would fail
        assert os.getcwd() == NB_DIR
        assert os.path.realpath(ns["ROOT"]) == os.path.realpath(ROOT) and sys.path[0] == ns["ROOT"]
    finally:
        os.chdir(cwd)
        sys.path[:] = path


# ---------------------------------------------------------------------------
# The comparison can fail
# ---------------------------------------------------------------------------

def _first_number(values):
    for key, v in values.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return key, v
    raise AssertionError("no numeric value in the CHECKED dict")


def _rewrite_checked(nb, checked):
    """A copy of `nb` whose committed checked output says `checked` instead."""
    nb = copy.deepcopy(nb)
    cell = [c for c in nb.cells if c.cell_type == "code"][-1]
    for o in _checked_outputs(cell):
        o["data"][CHECKED_MIME] = copy.deepcopy(checked)
    return nb


@pytest.mark.parametrize("name", EXPECTED)
def test_compare_checked_fails_on_a_stale_number(name, tmp_path):
    """Perturb a committed number in a temporary copy: beyond its tolerance the comparison fails,
    within it the comparison passes; a dropped key or a changed tolerance fails too."""
    nb = _read(name)
    committed = read_checked(nb)
    assert compare_checked(committed, copy.deepcopy(committed)) == []
    key, value = _first_number(committed["values"])
    rtol, atol = _tolerance(committed, key)
    width = atol + rtol * abs(value)

    def round_trip(checked):
        path = tmp_path / name
        nbformat.write(_rewrite_checked(nb, checked), str(path))
        return read_checked(nbformat.read(str(path), as_version=4))

    stale = copy.deepcopy(committed)
    stale["values"][key] = value + 10 * width + 1e-3 * max(1.0, abs(value))
    problems = compare_checked(round_trip(stale), committed)
    assert len(problems) == 1 and problems[0].startswith(key + ":"), problems
    if width > 0:
        close = copy.deepcopy(committed)
        close["values"][key] = value + 0.5 * width
        assert compare_checked(round_trip(close), committed) == []
    dropped = copy.deepcopy(committed)
    del dropped["values"][key]
    assert compare_checked(committed, dropped) == [f"{key}: committed but no longer printed"]
    loose = copy.deepcopy(committed)
    loose["tolerance"] = {"rtol": 1.0, "atol": 1.0}
    assert any(p.startswith("tolerance:") for p in compare_checked(committed, loose))


def test_compare_checked_lists_and_exact_values():
    base = {"tolerance": {"rtol": 0.1, "atol": 0.0}, "tolerance_per_key": {"n": {"rtol": 0.0, "atol": 0.0}},
            "values": {"x": [1.0, 2.0], "n": 3, "s": "CascadeVAE"}}
    ok = copy.deepcopy(base)
    ok["values"]["x"] = [1.05, 1.9]
    assert compare_checked(base, ok) == []
    for change, expected in [(("x", [1.0, 2.5]), "x[1]:"), (("x", [1.0]), "x:"), (("n", 4), "n:"),
                             (("s", "JointVAE"), "s:")]:
        bad = copy.deepcopy(base)
        bad["values"][change[0]] = change[1]
        problems = compare_checked(base, bad)
        assert len(problems) == 1 and problems[0].startswith(expected), problems
    # A value the re-execution could not compute (no data) passes only where the data is missing here too.
    offline = copy.deepcopy(base)
    del offline["values"]["x"]
    offline["skipped"] = {"x": "no data"}
    assert compare_checked(base, offline, may_skip=True) == []
    assert compare_checked(base, offline) == ["x: committed but no longer printed (skipped: no data)"]


# ---------------------------------------------------------------------------
# Re-execution: the committed numbers must still come out
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_executes_and_reproduces_its_outputs(name, tmp_path, monkeypatch):
    if not kernel_available():
        pytest.fail('no "python3" Jupyter kernel: run `python -m ipykernel install --sys-prefix --name python3`.')
    for key, value in execution_env(str(tmp_path)).items():
        monkeypatch.setenv(key, value)
    nb = _read(name)
    committed = read_checked(nb)
    fresh_nb = copy.deepcopy(nb)
    try:
        execute(fresh_nb, name)
    except nbclient.exceptions.CellTimeoutError:
        pytest.fail(f"{name} did not finish within its {NOTEBOOK_TIMEOUT_S.get(name, DEFAULT_TIMEOUT_S)} s budget",
                    pytrace=False)
    except nbclient.exceptions.CellExecutionError as err:
        # The message holds the failing cell's source and traceback (e.g. an identity's assert).
        pytest.fail(f"{name} failed:\n{err}", pytrace=False)
    problems = compare_checked(committed, read_checked(fresh_nb), may_skip=not os.path.isdir(SHARED_DATA))
    assert not problems, (f"{name}: the committed outputs are stale; re-execute and commit it "
                          f"(`OMP_NUM_THREADS=1 python tests/test_notebooks.py {_stem(name)}`):\n  "
                          + "\n  ".join(problems))


def main(argv):
    """Execute the named notebooks (default: all) exactly as the test does and save them with outputs."""
    names = [a if a.endswith(".ipynb") else a + ".ipynb" for a in argv] or EXPECTED
    unknown = sorted(set(names) - set(EXPECTED))
    if unknown:
        sys.exit(f"unknown notebooks {unknown}; expected some of {EXPECTED}")
    with tempfile.TemporaryDirectory() as tmp:
        env = execution_env(tmp)
        del env["TRAIN_A_MODEL_OUT"]   # the saved 05 prints its run folder as ../runs/train_a_model/... (git-ignored)
        os.environ.update(env)
        for name in names:
            nb = _read(name)
            seconds = execute(nb, name)
            nbformat.write(nb, os.path.join(NB_DIR, name))
            size = os.path.getsize(os.path.join(NB_DIR, name))
            print(f"{name}: executed in {seconds:.1f} s, {size:,} bytes; checked {json.dumps(read_checked(nb))}")


if __name__ == "__main__":
    main(sys.argv[1:])
