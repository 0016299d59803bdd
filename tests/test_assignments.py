"""assignments/: the solution regions, the student copy make.py writes, and the tests of the
tests: the solution passes every grading test, a student copy fails exactly the graded ones,
other correct implementations pass (MSS with the stratum weight at (i - 1) mod B, ...), and
each known-wrong implementation fails at least one named grading test, and the usual ones
(KL(U || q), the temperature ignored, a sum over the batch) a public test too.

Grading and public tests are plain functions of the modules they test, so they run here
in-process on the solution modules with one function swapped (a known-wrong or an
alternative implementation) and on a student copy's modules loaded under other names.
End to end, as commands: grade.py on a full student copy and on the solution; a JointVAE
copy written three ways (the solution, every function written differently, the three
usual mistakes) through its public tests and `grade.py --results`; a partial copy graded
without flags."""

import ast
import contextlib
import importlib.util
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

import btcvae
import cascadevae
import jointvae
import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSIGN = os.path.join(ROOT, "assignments")
GRADING = os.path.join(ASSIGN, "grading")
for path in (ASSIGN, GRADING):
    if path not in sys.path:
        sys.path.insert(0, path)

import grade  # noqa: E402
import make  # noqa: E402
import regions as rg  # noqa: E402

SOLUTION = {"jointvae": jointvae, "btcvae": btcvae, "cascadevae": cascadevae, "metrics": metrics}

# The functions the issue asks to mark, at least.
REQUIRED = {
    "jointvae.reparameterize", "jointvae.sample_gumbel_softmax", "jointvae.kl_categorical_uniform",
    "jointvae.linear_capacity", "jointvae.jointvae_loss", "btcvae.log_qz_mws", "btcvae.mss_log_weights",
    "btcvae.decompose_kl", "btcvae.btcvae_loss", "cascadevae.relieved_dims", "cascadevae.same_class_pairs",
    "cascadevae.assign", "cascadevae.cascadevae_loss", "metrics.cluster_accuracy", "metrics.mutual_information_gap",
}


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GRADERS = [_load(os.path.join(GRADING, f), os.path.splitext(f)[0])
           for f in sorted(os.listdir(GRADING)) if f.startswith("grade_") and f.endswith(".py")]
TESTS = {f"{g.__name__}::{name}": fn for g in GRADERS for name, fn in vars(g).items()
         if name.startswith("test_") and callable(fn)}


def run_grading(modules, functions=None):
    """{test id: None if it passed, else the exception} for the grading tests of `functions`."""
    out = {}
    for test_id, fn in TESTS.items():
        if functions is None or fn.grades in functions:
            try:
                fn(**{p: modules[p] for p in inspect.signature(fn).parameters})
                out[test_id] = None
            except Exception as err:                              # noqa: BLE001 (a failure is the result)
                out[test_id] = err
    return out


def _tests_of(function):
    return {t for t, fn in TESTS.items() if fn.grades == function}


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """The full student copy (every region removed), made once for this file."""
    out = str(tmp_path_factory.mktemp("hw") / "copy")
    info = make.make(out, log=lambda *a: None)
    return out, info


def _points():
    with open(os.path.join(ASSIGN, "points.json")) as f:
        return json.load(f)


def _student_modules(out, tag):
    return {m: _load(os.path.join(out, f"{m}.py"), f"{tag}_{m}") for m in SOLUTION if os.path.exists(
        os.path.join(out, f"{m}.py"))}


# --------------------------------------------------------------------------- the markers


def test_regions_mark_the_equations_and_points_cover_exactly_them():
    regs = rg.all_regions(ROOT)
    names = {r.qualname for r in regs}
    assert REQUIRED <= names, f"unmarked: {sorted(REQUIRED - names)}"
    with open(os.path.join(ASSIGN, "points.json")) as f:
        points = json.load(f)
    assert set(points) == names, f"points.json and the regions differ: {sorted(set(points) ^ names)}"
    assert all(isinstance(v, (int, float)) and v > 0 for v in points.values())
    assert {fn.grades for fn in TESTS.values()} == names, "every marked function needs grading tests, and only those"
    for r in regs:
        assert r.equation and ", return " in r.text and len(r.text) < 100, r.qualname
        with open(r.path) as f:
            lines = f.read().split("\n")
        assert lines[r.begin].strip().startswith("# BEGIN SOLUTION") and lines[r.end].strip() == "# END SOLUTION"
        # the docstring stays outside the region: it is what the student reads
        fn = getattr(SOLUTION[r.module], r.function)
        src_lines, first = inspect.getsourcelines(fn)
        doc = ast.parse(inspect.getsource(fn)).body[0].body[0]
        assert isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant), f"{r.qualname} has no docstring"
        assert first + doc.end_lineno - 1 < r.begin + 1 < first + len(src_lines), \
            f"{r.qualname}: the region must follow the docstring, inside the function"


def test_malformed_markers_are_one_sentence(tmp_path):
    cases = {"# BEGIN SOLUTION\nx = 1\n": "never closed", "def f():\n    # END SOLUTION\n": "without a BEGIN",
             "def f():\n    # BEGIN SOLUTION\n    x = 1\n  # END SOLUTION\n": "indented",
             "# BEGIN SOLUTION\n# END SOLUTION\n": "inside a function",
             "def f():\n    y = 1  # BEGIN SOLUTION\n": "line of its own"}
    for text, words in cases.items():
        path = tmp_path / "m.py"
        path.write_text(text)
        with pytest.raises(rg.RegionError, match=words):
            rg.find_regions(str(path))


# --------------------------------------------------------------------------- the solution


def test_the_solution_passes_every_grading_test():
    failed = {t: repr(e) for t, e in run_grading(SOLUTION).items() if e is not None}
    assert not failed, failed


def test_the_public_tests_pass_on_the_solution():
    for name in sorted(os.listdir(os.path.join(ASSIGN, "public"))):
        if name.startswith("test_") and name.endswith(".py"):
            public = _load(os.path.join(ASSIGN, "public", name), name[:-3])
            for test, fn in vars(public).items():
                if test.startswith("test_") and "smoke" not in test:  # the smoke runs are those of tests/test_<m>.py
                    fn()


# --------------------------------------------------------------------------- the student copy


def test_student_copy_holds_no_solution(student):
    out, info = student
    files = [os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs]
    assert not [f for f in files if f.startswith(("assignments", ".git/", "results", "benchmarks", ".ci"))
                or "grade_" in f], files
    assert not os.path.exists(os.path.join(out, "ASSIGNMENT.md")), "the assignment is README.md"
    assert sum(os.path.getsize(os.path.join(out, f)) for f in files) < 2_000_000, "the copy should be small"
    assert "tests/test_btcvae.py" in info["held_back"] and "notebooks/02_tc_decomposition.ipynb" in info["held_back"]
    text, raises = "", 0
    for f in files:
        lines = make.text_lines(os.path.join(out, f))
        text += "\n".join(lines or []) + "\n"
        if f.endswith(".py"):
            raises += sum(line.strip().startswith("raise NotImplementedError(") for line in lines)
        if f.endswith(".ipynb"):
            nb = json.load(open(os.path.join(out, f)))
            assert all(c.get("outputs", []) == [] for c in nb["cells"]), f"{f} has outputs"
    assert not [line for line in text.split("\n") if rg.BEGIN.match(line) or rg.END.match(line)], "marker lines left"
    # An independent check of make.py's: no long line of any region appears in the copy, even
    # inside a longer line (long lines are the ones that carry an answer).
    for r in rg.all_regions(ROOT):
        for line in r.body:
            s = line.strip()
            assert len(s) <= 24 or s not in text, f"{r.qualname}: {s!r} is in the student copy"
    assert raises == len(info["removed"]) == len(rg.all_regions(ROOT))


def test_student_copy_imports_and_fails_exactly_the_graded_tests(student, capsys):
    out, _ = student
    modules = _student_modules(out, "hw")
    results = run_grading(modules)
    assert results and all(isinstance(e, NotImplementedError) for e in results.values()), \
        {t: repr(e) for t, e in results.items() if not isinstance(e, NotImplementedError)}
    with pytest.raises(SystemExit) as exc:                        # the scripts still run: --help
        modules["btcvae"].main(["--help"])
    assert exc.value.code == 0 and "--estimator" in capsys.readouterr().out


def test_partial_copy_fails_only_the_removed_functions(tmp_path):
    only = ["btcvae.log_qz_mws", "btcvae.mss_log_weights", "log_qz_mss"]
    info = make.make(str(tmp_path / "part"), methods=["btcvae"], only=only, log=lambda *a: None)
    assert info["removed"] == ["btcvae.mss_log_weights", "btcvae.log_qz_mws", "btcvae.log_qz_mss"]
    assert info["left_out"] == ["cascadevae.py", "jointvae.py"]
    modules = _student_modules(str(tmp_path / "part"), "part")
    results = run_grading(modules, {fn.grades for fn in TESTS.values() if fn.grades.split(".")[0] in modules})
    failed = {t for t, e in results.items() if e is not None}
    assert failed == set().union(*(_tests_of(f) for f in info["removed"]))
    assert all(isinstance(results[t], NotImplementedError) for t in failed)


def test_public_tests_skip_what_is_not_written_yet(student):
    out, _ = student
    assert sorted(f for f in os.listdir(os.path.join(out, "tests")) if f.endswith("_public.py")) == \
        [f"test_{m}_public.py" for m in ("btcvae", "cascadevae", "jointvae", "metrics")]
    # one of them, smoke run included (a pytest process in the copy costs seconds); all four
    # pass on the solution (test_the_public_tests_pass_on_the_solution)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                           "tests/test_btcvae_public.py"],
                          cwd=out, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "not implemented yet: btcvae.log_qz_mws" in proc.stdout and "failed" not in proc.stdout


def _grade(repo, tmp_path, *flags):
    """grade.py REPO --results --json as a command: (exit status, stdout, results.json, table.json)."""
    results, table = str(tmp_path / "results.json"), str(tmp_path / "table.json")
    for path in (results, table):
        if os.path.exists(path):
            os.remove(path)
    proc = subprocess.run([sys.executable, os.path.join(ASSIGN, "grade.py"), repo, "--results", results,
                           "--json", table, *flags], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert os.path.exists(results), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.returncode, proc.stdout, json.load(open(results)), json.load(open(table))


def _check_gradescope(res, earned, functions):
    """results.json in Gradescope's format: the total, one test per graded function, each with
    its points and the report of its grading tests."""
    points = _points()
    assert set(res) >= {"score", "max_score", "tests", "output"}
    assert res["max_score"] == sum(points[f] for f in functions) and res["score"] == sum(earned.values()), res
    assert [t["name"].split(" ")[0] for t in res["tests"]] == list(functions)
    for t, f in zip(res["tests"], functions):
        assert set(t) >= {"name", "score", "max_score", "output", "status"} and t["max_score"] == points[f]
        assert t["score"] == earned.get(f, 0) and t["status"] == ("passed" if t["score"] else "failed"), t
        assert isinstance(t["output"], str) and re.search(r"(PASSED|FAILED|ERROR) test_", t["output"]), t


def test_grade_command_on_the_student_copy_and_on_the_solution(student, tmp_path):
    out, info = student
    total = sum(_points().values())
    functions = [r.qualname for r in rg.all_regions(ROOT)]
    for repo, status in ((out, 1), (ROOT, 0)):
        code, stdout, res, table = _grade(repo, tmp_path)
        assert code == status, stdout[-3000:]
        rows = table["rows"]
        assert [r["function"] for r in rows] == functions
        assert (table["score"], table["max_score"]) == ((0 if status else total), total)
        if status:
            assert all(r["result"] == "failed" and "NotImplementedError" in r["message"] for r in rows), rows
            assert f"score: 0/{total:g} points, 0/{len(rows)} functions passed" in stdout
            _check_gradescope(res, {}, functions)
        else:
            assert all(r["result"] == "passed" for r in rows), rows
            assert f"score: {total:g}/{total:g} points, {len(rows)}/{len(rows)} functions passed" in stdout
            _check_gradescope(res, {f: _points()[f] for f in functions}, functions)


def test_make_refuses_what_it_must(tmp_path):
    with pytest.raises(SystemExit, match="inside the repository"):
        make.make(os.path.join(ROOT, "runs", "hw"), log=lambda *a: None)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="not a student copy"):
        make.make(str(tmp_path / "mine"), log=lambda *a: None)
    with pytest.raises(SystemExit, match="no solution region for nosuch"):
        make.make(str(tmp_path / "x"), only=["nosuch"], log=lambda *a: None)
    # btcvae.py's reparameterize is jointvae.py's: removing one and handing out the other leaks it
    with pytest.raises(SystemExit, match="btcvae.py:.* repeats a line of jointvae.reparameterize"):
        make.make(str(tmp_path / "leak"), only=["jointvae.reparameterize"], log=lambda *a: None)
    assert not (tmp_path / "leak").exists()


# --------------------------------------------------------------------------- known-wrong and other correct code


@contextlib.contextmanager
def swapped(module, name, replacement):
    """module.<name> replaced; `replacement` is a function, or (old, new) to edit its source."""
    original = getattr(module, name)
    if isinstance(replacement, tuple):
        old, new = replacement
        source = inspect.getsource(original)
        assert source.count(old) == 1, f"{old!r} is not (once) in {module.__name__}.{name}"
        namespace = {}
        exec(compile(source.replace(old, new), module.__file__, "exec"), module.__dict__, namespace)
        replacement = namespace[name]
    setattr(module, name, replacement)
    try:
        yield
    finally:
        setattr(module, name, original)


# The usual mistakes, as edits of the solution's source (also written into a student copy below).
KL_REVERSED = ("(probs * torch.log(probs + 1e-12)).sum(dim=-1) + math.log(k)",
               "-torch.log(probs + 1e-12).mean(dim=-1) - math.log(k)")                # KL(U || q)
NO_TEMPERATURE = ("torch.softmax((log_alpha + g) / temperature, dim=-1)", "torch.softmax(log_alpha + g, dim=-1)")
KL_SUMMED = ("kl_normal(mu, logvar).mean(dim=0)", "kl_normal(mu, logvar).sum(dim=0)")
RECON_SUMMED = ('reduction="sum") / (batch * channels)', 'reduction="sum") / channels')

WRONG = [
    ("btcvae.log_qz_mss", "MSS with log w added once per dimension in the joint",
     ("torch.logsumexp(log_w + mat.sum(dim=2), dim=1)",
      "torch.logsumexp((log_w.unsqueeze(2) + mat).sum(dim=2), dim=1)"),
     "grade_btcvae::test_mss_estimator_equals_eq_s6_written_out"),
    ("btcvae.mss_log_weights", "the authors' strided MSS matrix (diagonal with stride M + 1 = B)",
     ("    w[i, i] = 1.0 / n\n    w[i, (i + 1) % b] = (n - m) / (n * m)\n",
      "    w.view(-1)[::m + 1] = 1.0 / n\n    w.view(-1)[1::m + 1] = (n - m) / (n * m)\n"
      "    w[m - 1, 0] = (n - m) / (n * m)\n"),
     "grade_btcvae::test_every_row_has_the_weights_of_eq_s6"),
    ("btcvae.mss_log_weights", "the authors' strided MSS matrix, by enumeration",
     ("    w[i, i] = 1.0 / n\n    w[i, (i + 1) % b] = (n - m) / (n * m)\n",
      "    w.view(-1)[::m + 1] = 1.0 / n\n    w.view(-1)[1::m + 1] = (n - m) / (n * m)\n"
      "    w[m - 1, 0] = (n - m) / (n * m)\n"),
     "grade_btcvae::test_mss_is_unbiased_over_every_batch"),
    ("jointvae.jointvae_loss", "KL summed over the batch instead of averaged",
     ("kl_normal(mu, logvar).mean(dim=0)", "kl_normal(mu, logvar).sum(dim=0)"),
     "grade_jointvae::test_eq7_terms_are_batch_means_and_add_up"),
    ("cascadevae.cascadevae_loss", "KL summed over the batch instead of averaged",
     ("kl_normal(mu, sigma).mean(dim=0)", "kl_normal(mu, sigma).sum(dim=0)"),
     "grade_cascadevae::test_eq5_terms_against_an_independent_computation"),
    ("btcvae.btcvae_loss", "eq. 3 terms summed over the batch instead of averaged",
     ('terms["mi"].mean(), terms["tc"].mean(), terms["dwkl"].mean()',
      'terms["mi"].sum(), terms["tc"].sum(), terms["dwkl"].sum()'),
     "grade_btcvae::test_eq5_weights_the_batch_means_of_the_eq3_terms"),
    ("jointvae.jointvae_loss", "C_c not clipped at sum_i log K_i",
     ("c_c = min(linear_capacity(step, *c_disc), sum(math.log(a.shape[-1]) for a in alphas))",
      "c_c = linear_capacity(step, *c_disc)"),
     "grade_jointvae::test_discrete_capacity_is_clipped_at_sum_log_k"),
    ("cascadevae.assign", "eq. 6 with ordered pairs but lambda' unchanged",
     ("slot_cost = lam * np.arange(slots", "slot_cost = 2 * lam * np.arange(slots"),
     "grade_cascadevae::test_assign_charges_lam_once_per_unordered_pair"),
    ("jointvae.sample_gumbel_softmax", "Gumbel-softmax without the temperature",
     ("torch.softmax((log_alpha + g) / temperature, dim=-1)", "torch.softmax(log_alpha + g, dim=-1)"),
     "grade_jointvae::test_gumbel_softmax_log_ratios_are_logistic_at_every_temperature"),
    ("jointvae.kl_categorical_uniform", "KL(U || q) instead of KL(q || U)", KL_REVERSED,
     "grade_jointvae::test_categorical_kl_matches_the_closed_form"),
    ("jointvae.kl_categorical_uniform", "KL(U || q) instead of KL(q || U), by the bounds", KL_REVERSED,
     "grade_jointvae::test_categorical_kl_bounds_zero_and_log_k"),
    ("jointvae.jointvae_loss", "reconstruction summed over the batch instead of averaged", RECON_SUMMED,
     "grade_jointvae::test_eq7_terms_are_batch_means_and_add_up"),
    ("jointvae.reparameterize", "sigma = exp(logvar) instead of exp(logvar / 2)",
     ("torch.exp(0.5 * logvar) * eps", "torch.exp(logvar) * eps"),
     "grade_jointvae::test_reparameterize_is_a_gaussian_sample_with_pathwise_gradients"),
    ("btcvae.log_qz_mws", "eq. S4 with M = the rows of the block instead of the batch",
     ("mat.shape[1])", "mat.shape[0])"), "grade_btcvae::test_mws_equals_eq_s4_written_out"),
    ("btcvae.decompose_kl", "dimension-wise KL from the joint log q(z)",
     ("dwkl=log_prod_qzd - log_pz", "dwkl=log_qz - log_pz"), "grade_btcvae::test_eq3_terms_with_mws"),
    ("cascadevae.relieved_dims", "the cascade one update early",
     ("n = step // r", "n = (step + 1) // r"),
     "grade_cascadevae::test_paper_schedule_relieves_one_dim_every_r_updates"),
    ("cascadevae.same_class_pairs", "ordered pairs (each pair twice)",
     ("(counts * (counts - 1.0)).sum() / 2.0", "(counts * (counts - 1.0)).sum()"),
     "grade_cascadevae::test_pairs_are_counted_once_per_unordered_pair"),
    ("metrics.cluster_accuracy", "the worst one-to-one map",
     ("linear_sum_assignment(cm, maximize=True)", "linear_sum_assignment(cm)"),
     "grade_metrics::test_hungarian_is_the_best_one_to_one_map"),
    ("metrics.mutual_information_gap", "gap not divided by H(v_k)",
     ("return (best - second) / entropy, top, runner", "return best - second, top, runner"),
     "grade_metrics::test_gap_is_top_minus_runner_up_over_the_entropy"),
]


@pytest.mark.parametrize("function,what,edit,catcher", WRONG, ids=[f"{w[0]}: {w[1]}" for w in WRONG])
def test_known_wrong_implementation_is_caught(function, what, edit, catcher):
    module, name = function.split(".")
    with swapped(SOLUTION[module], name, edit):
        results = run_grading(SOLUTION, {function})
    assert catcher in results, f"no grading test {catcher} for {function}"
    assert isinstance(results[catcher], AssertionError), \
        f"{what}: {catcher} should fail, got {results[catcher]!r}"


def _gumbel_by_distributions(logits, temperature, eps=1e-12):
    return torch.distributions.RelaxedOneHotCategorical(torch.tensor(temperature), logits=logits).rsample()


def _reparameterize_by_distributions(mu, logvar):
    return torch.distributions.Normal(mu, torch.exp(logvar / 2)).rsample()


def _assign_full_matrix(u, lam, slots=None):
    """eq. 6 with every class offered all B slots, scipy on the (B, S*B) matrix, no cap."""
    u = torch.as_tensor(u, dtype=torch.float64).numpy()
    b, s = u.shape
    cost = (-u)[:, :, None] + lam * np.arange(b)[None, None, :]
    rows, cols = linear_sum_assignment(cost.reshape(b, s * b))
    d = np.zeros(b, dtype=np.int64)
    d[rows] = cols // b
    return torch.from_numpy(d)


def _mig_gap_by_sorting(mi, entropy):
    order = np.argsort(mi, axis=0)[::-1]
    k = np.arange(mi.shape[1])
    if mi.shape[0] == 1:
        return mi[0] / entropy, order[0], -np.ones(mi.shape[1], dtype=int)
    return (mi[order[0], k] - mi[order[1], k]) / entropy, order[0], order[1]


OTHER_CORRECT = [
    ("btcvae.mss_log_weights", "stratum weight at (i - 1) mod B", ("(i + 1) % b", "(i - 1) % b")),
    ("jointvae.sample_gumbel_softmax", "torch.distributions.RelaxedOneHotCategorical", _gumbel_by_distributions),
    ("jointvae.reparameterize", "torch.distributions.Normal.rsample", _reparameterize_by_distributions),
    ("cascadevae.assign", "the uncapped (B, S*B) slot matrix", _assign_full_matrix),
    ("metrics.mutual_information_gap", "argsort instead of sort", _mig_gap_by_sorting),
]


@pytest.mark.parametrize("function,what,replacement", OTHER_CORRECT, ids=[f"{c[0]}: {c[1]}" for c in OTHER_CORRECT])
def test_other_correct_implementations_pass(function, what, replacement):
    module, name = function.split(".")
    with swapped(SOLUTION[module], name, replacement):
        failed = {t: repr(e) for t, e in run_grading(SOLUTION, {function}).items() if e is not None}
    assert not failed, f"{what} is correct but fails {failed}"


def test_repo_mss_test_checks_the_equation_not_the_layout():
    """tests/test_btcvae.py's eq. S6 test accepts the (i - 1) mod B layout end to end (through
    decompose_kl) and still rejects the weight added once per dimension in the joint."""
    repo_test = _load(os.path.join(ROOT, "tests", "test_btcvae.py"), "repo_test_btcvae")
    with swapped(btcvae, "mss_log_weights", ("(i + 1) % b", "(i - 1) % b")):
        repo_test.test_mss_equals_eq_s6_written_out()
    wrong = ("torch.logsumexp(log_w + mat.sum(dim=2), dim=1)",
             "torch.logsumexp((log_w.unsqueeze(2) + mat).sum(dim=2), dim=1)")
    with swapped(btcvae, "log_qz_mss", wrong), pytest.raises(AssertionError):
        repo_test.test_mss_equals_eq_s6_written_out()


# --------------------------------------------------------------------------- the public tests


def _public(module):
    """The public test module of `module`, loaded here (it imports the solution module, so a
    function swapped in the solution module is what it tests)."""
    return _load(os.path.join(ASSIGN, "public", f"test_{module}_public.py"), f"public_{module}")


def run_public(module):
    """{public test name: None if it passed, else the exception}; the smoke runs left out."""
    out = {}
    for name, fn in vars(_public(module)).items():
        if name.startswith("test_") and callable(fn) and "smoke" not in name:
            try:
                fn()
                out[name] = None
            except Exception as err:                              # noqa: BLE001 (a failure is the result)
                out[name] = err
    return out


# The usual mistakes that pass the shapes but not the properties the public tests check.
WRONG_PUBLIC = [
    ("jointvae.kl_categorical_uniform", "KL(U || q) instead of KL(q || U)", KL_REVERSED,
     "test_kl_categorical_of_a_uniform_choice_among_m_of_k"),
    ("jointvae.kl_categorical_uniform", "KL(U || q), by the bound log K", KL_REVERSED,
     "test_kl_categorical_is_zero_at_uniform_bounded_by_log_k_and_adds_over_independent_variables"),
    ("jointvae.kl_categorical_uniform", "a mean over the K categories instead of the sum",
     ("(probs * torch.log(probs + 1e-12)).sum(dim=-1)", "(probs * torch.log(probs + 1e-12)).mean(dim=-1)"),
     "test_kl_categorical_of_a_uniform_choice_among_m_of_k"),
    ("jointvae.sample_gumbel_softmax", "the temperature ignored", NO_TEMPERATURE,
     "test_gumbel_softmax_is_one_hot_when_cold_and_uniform_when_hot"),
    ("jointvae.sample_gumbel_softmax", "multiplied by the temperature",
     ("(log_alpha + g) / temperature", "(log_alpha + g) * temperature"),
     "test_gumbel_softmax_is_one_hot_when_cold_and_uniform_when_hot"),
    ("jointvae.jointvae_loss", "KL summed over the batch", KL_SUMMED, "test_loss_terms_are_batch_means"),
    ("jointvae.jointvae_loss", "reconstruction summed over the batch", RECON_SUMMED,
     "test_loss_terms_are_batch_means"),
    ("btcvae.btcvae_loss", "eq. 3 terms summed over the batch",
     ('terms["mi"].mean(), terms["tc"].mean(), terms["dwkl"].mean()',
      'terms["mi"].sum(), terms["tc"].sum(), terms["dwkl"].sum()'), "test_loss_terms_are_batch_means"),
    ("btcvae.btcvae_loss", "reconstruction summed over the batch",
     ('reduction="sum") / batch', 'reduction="sum")'), "test_loss_terms_are_batch_means"),
    ("cascadevae.cascadevae_loss", "KL summed over the batch",
     ("kl_normal(mu, sigma).mean(dim=0)", "kl_normal(mu, sigma).sum(dim=0)"), "test_loss_terms_are_batch_means"),
]


@pytest.mark.parametrize("function,what,edit,catcher", WRONG_PUBLIC, ids=[f"{w[0]}: {w[1]}" for w in WRONG_PUBLIC])
def test_known_wrong_implementation_fails_a_public_test_and_the_grading(function, what, edit, catcher):
    module, name = function.split(".")
    with swapped(SOLUTION[module], name, edit):
        public = run_public(module)
        graded = run_grading(SOLUTION, {function})
    assert isinstance(public[catcher], AssertionError), f"{what}: public {catcher} should fail, got {public[catcher]!r}"
    # the message says what went wrong without the equation's answer
    assert "expected log(" in str(public[catcher]) or "average over the batch" in str(public[catcher]) \
        or "temperature" in str(public[catcher]) or "log K" in str(public[catcher]), str(public[catcher])
    failed = [t for t, e in graded.items() if e is not None]
    assert failed and all(isinstance(graded[t], AssertionError) for t in failed), f"{what}: grading {graded}"


# Correct, and written differently from the solution: bodies as a student might write them.
ALTERNATIVE = {
    "jointvae.reparameterize": "return torch.distributions.Normal(mu, (0.5 * logvar).exp()).rsample()",
    "jointvae.sample_gumbel_softmax": """
        gumbel = -torch.empty_like(logits).exponential_().log()      # -log Exp(1) is Gumbel(0, 1)
        return torch.softmax((logits + gumbel) / temperature, dim=-1)  # softmax ignores the logits' shift
    """,
    "jointvae.kl_categorical_uniform": """
        tiny = torch.finfo(probs.dtype).tiny
        neg_entropy = (probs * probs.clamp_min(tiny).log()).sum(-1)
        return math.log(probs.shape[-1]) + neg_entropy
    """,
    "jointvae.linear_capacity": """
        frac = min(step, num_iters) / num_iters
        return (1 - frac) * c_min + frac * c_max
    """,
    "jointvae.jointvae_loss": """
        recon = F.binary_cross_entropy_with_logits(x_logits, x, reduction="none").flatten(2).sum(-1).mean()
        kl_cont_units = torch.mean(0.5 * (mu ** 2 + torch.exp(logvar) - logvar - 1), dim=0)
        kl_disc_vars = torch.stack([kl_categorical_uniform(a).mean() for a in alphas]) if alphas else mu.new_zeros(0)
        kl_cont, kl_disc = kl_cont_units.sum(), kl_disc_vars.sum()
        c_z = linear_capacity(step, *c_cont)
        c_c = min(linear_capacity(step, *c_disc), sum(math.log(a.shape[1]) for a in alphas))
        if beta is None:
            loss = recon + gamma * torch.abs(kl_cont - c_z) + (gamma * torch.abs(kl_disc - c_c) if alphas else 0.0)
        else:
            loss = recon + beta * (kl_cont + kl_disc)
        return {"loss": loss, "recon": recon, "kl_cont": kl_cont, "kl_disc": kl_disc, "c_cont": c_z, "c_disc": c_c,
                "kl_cont_units": kl_cont_units, "kl_disc_vars": kl_disc_vars}
    """,
}


def _body(function, indent=""):
    return textwrap.indent(textwrap.dedent(ALTERNATIVE[function]).strip("\n") + "\n", indent or " ")


def _alternative(function):
    """ALTERNATIVE[function] as a function of the solution module (its globals: torch, math, F,
    and the module's other functions, looked up when called)."""
    module, name = function.split(".")
    mod = SOLUTION[module]
    source = f"def {name}{inspect.signature(getattr(mod, name))}:\n" + _body(function, "    ")
    namespace = {}
    exec(compile(source, mod.__file__, "exec"), mod.__dict__, namespace)
    return namespace[name]


@pytest.mark.parametrize("function", sorted(ALTERNATIVE))
def test_alternative_implementations_pass_the_public_and_grading_tests(function):
    module, name = function.split(".")
    with swapped(SOLUTION[module], name, _alternative(function)):
        public = {t: repr(e) for t, e in run_public(module).items() if e is not None}
        graded = {t: repr(e) for t, e in run_grading(SOLUTION, {function}).items() if e is not None}
    assert not public and not graded, (public, graded)


@pytest.mark.parametrize("function,what,replacement", OTHER_CORRECT, ids=[f"{c[0]}: {c[1]}" for c in OTHER_CORRECT])
def test_other_correct_implementations_pass_the_public_tests(function, what, replacement):
    module, name = function.split(".")
    with swapped(SOLUTION[module], name, replacement):
        failed = {t: repr(e) for t, e in run_public(module).items() if e is not None}
    assert not failed, f"{what} is correct but fails {failed}"


# --------------------------------------------------------------------------- the copy: README, manifest


def _readme_problems(out):
    """Links to files the copy lacks, and table rows whose cell count differs from their header's."""
    text = open(os.path.join(out, "README.md"), encoding="utf-8").read()
    problems = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if not re.match(r"[a-z]+://", target) and not os.path.exists(os.path.join(out, target.split("#")[0])):
            problems.append(f"link to {target}, which is not in the copy")
    cells = None
    for line in text.split("\n"):
        if line.startswith("|"):
            n = len(re.findall(r"(?<!\\)\|", line))
            cells = n if cells is None else cells
            if n != cells:
                problems.append(f"table row with {n - 1} cells instead of {cells - 1}: {line}")
        else:
            cells = None
    return text, problems


def test_student_readme_is_the_assignment(student, tmp_path):
    out, info = student
    text, problems = _readme_problems(out)
    assert not problems, problems
    assert "python -m pytest tests -q" in text and "## Grading" in text
    for q in info["removed"]:
        assert f"`{q.split('.')[1]}`" in text, q
    assert f"out of {sum(_points().values()):g}" in text
    assert r"KL(q(c\|x) \|\| Uniform(K))" in text, "| in a table cell must be escaped"
    # a copy of one method: its README is about that method only
    make.make(str(tmp_path / "j"), methods=["jointvae"], log=lambda *a: None)
    text, problems = _readme_problems(str(tmp_path / "j"))
    assert not problems, problems
    assert not re.search(r"btcvae|cascadevae|beta-tcvae", text, re.I), "other methods named in the README"
    assert "out of 10" in text and "jointvae.py --dataset shapes" in text


def test_manifest_records_the_copy_and_grade_reads_it(tmp_path):
    """assignment.json: methods, --only, the functions removed with their points; grade.py
    grades exactly those, neither the given code nor the files left out."""
    only = ["log_qz_mws", "mss_log_weights", "log_qz_mss"]
    info = make.make(str(tmp_path / "b"), methods=["btcvae"], only=only, log=lambda *a: None)
    manifest = json.load(open(tmp_path / "b" / "assignment.json"))
    assert manifest == info["manifest"] and manifest["made_by"] == "assignments/make.py"
    assert manifest["methods"] == ["btcvae"] and manifest["only"] == only
    assert [f["function"] for f in manifest["functions"]] == info["removed"]
    assert {f["function"]: f["points"] for f in manifest["functions"]} == {q: _points()[q] for q in info["removed"]}
    assert manifest["max_score"] == 7 and manifest["left_out"] == ["cascadevae.py", "jointvae.py"]
    assert "btcvae.decompose_kl" in manifest["given"] and "metrics.cluster_accuracy" in manifest["given"]
    assert manifest["commit"] is None or re.fullmatch(r"[0-9a-f]{40}", manifest["commit"])
    repo = str(tmp_path / "b")
    chosen, _ = grade.choose(repo, grade.read_manifest(repo))
    assert [r.qualname for r in chosen] == info["removed"]
    chosen, notes = grade.choose(repo, grade.read_manifest(repo), only=["log_qz_mws", "decompose_kl"])
    assert [r.qualname for r in chosen] == ["btcvae.log_qz_mws"] and any("decompose_kl" in n for n in notes)
    os.remove(os.path.join(repo, "assignment.json"))               # a copy without one: the files it holds
    chosen, notes = grade.choose(repo, grade.read_manifest(repo))
    assert {r.module for r in chosen} == {"btcvae", "metrics"} and any("jointvae.py" in n for n in notes)
    # make.py still recognises its copy (and replaces it); a hand-made folder it refuses
    make.make(repo, methods=["btcvae"], only=only, log=lambda *a: None)


def test_partial_copy_graded_without_flags(tmp_path):
    """grade.py HW, no flags, on a --methods/--only copy: the functions removed, and their points."""
    only = ["btcvae.log_qz_mws", "btcvae.mss_log_weights", "log_qz_mss"]
    info = make.make(str(tmp_path / "part"), methods=["btcvae"], only=only, log=lambda *a: None)
    code, stdout, res, table = _grade(str(tmp_path / "part"), tmp_path)
    assert code == 1 and table["max_score"] == res["max_score"] == info["manifest"]["max_score"] == 7, stdout
    assert [r["function"] for r in table["rows"]] == info["removed"]
    _check_gradescope(res, {}, info["removed"])
    assert "score: 0/7 points, 0/3 functions passed" in stdout


# --------------------------------------------------------------------------- end to end: a copy, written


def implement(out, bodies):
    """Write function bodies into a student copy: {qualname: body lines at any indent}, each
    replacing that function's `raise NotImplementedError(...)` line."""
    for function, body in bodies.items():
        path = os.path.join(out, function.split(".")[0] + ".py")
        lines = open(path, encoding="utf-8").read().split("\n")
        at = [i for i, line in enumerate(lines) if line.strip().startswith("raise NotImplementedError(")
              and f'"{function}:' in line]
        assert len(at) == 1, function
        indent = lines[at[0]][:len(lines[at[0]]) - len(lines[at[0]].lstrip())]
        lines[at[0]:at[0] + 1] = textwrap.indent(textwrap.dedent(body).strip("\n"), indent).split("\n")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines))


def _solution_body(function, edit=None):
    region = next(r for r in rg.all_regions(ROOT) if r.qualname == function)
    body = "\n".join(region.body)
    if edit:
        assert body.count(edit[0]) == 1, edit
        body = body.replace(*edit)
    return body


def _public_in_copy(out, smoke=False):
    """Run the copy's public tests as a student does: (exit status, {test: outcome}, output)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", "tests/test_jointvae_public.py"]
    proc = subprocess.run(cmd + ([] if smoke else ["-k", "not smoke"]), cwd=out, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    outcomes = dict((name, outcome) for outcome, name in
                    re.findall(r"^(PASSED|FAILED|SKIPPED|ERROR) tests/test_jointvae_public.py::(\w+)",
                               proc.stdout, re.M))
    return proc.returncode, outcomes, proc.stdout + proc.stderr


JOINTVAE = ["jointvae.reparameterize", "jointvae.sample_gumbel_softmax", "jointvae.kl_categorical_uniform",
            "jointvae.linear_capacity", "jointvae.jointvae_loss"]


@pytest.fixture(scope="module")
def jointvae_copy(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("hwj") / "copy")
    info = make.make(out, methods=["jointvae"], log=lambda *a: None)
    assert info["removed"] == JOINTVAE
    return out


def _fresh(jointvae_copy, tmp_path, name):
    out = str(tmp_path / name)
    shutil.copytree(jointvae_copy, out)
    return out


def test_copy_written_as_the_solution(jointvae_copy, tmp_path):
    out = _fresh(jointvae_copy, tmp_path, "solution")
    implement(out, {f: _solution_body(f) for f in JOINTVAE})
    code, outcomes, log = _public_in_copy(out, smoke=True)
    assert code == 0 and outcomes and set(outcomes.values()) == {"PASSED"}, log[-3000:]
    assert "test_smoke_run_on_shapes" in outcomes
    code, stdout, res, _ = _grade(out, tmp_path)
    assert code == 0, stdout[-3000:]
    _check_gradescope(res, {f: _points()[f] for f in JOINTVAE}, JOINTVAE)
    assert res["score"] == res["max_score"] == 10


def test_copy_written_differently(jointvae_copy, tmp_path):
    out = _fresh(jointvae_copy, tmp_path, "other")
    implement(out, {f: ALTERNATIVE[f] for f in JOINTVAE})
    code, outcomes, log = _public_in_copy(out)
    assert code == 0 and outcomes and set(outcomes.values()) == {"PASSED"}, log[-3000:]
    code, stdout, res, _ = _grade(out, tmp_path)
    assert code == 0 and res["score"] == 10, stdout[-3000:]


def test_copy_with_the_usual_mistakes(jointvae_copy, tmp_path):
    """KL(U || q), the temperature ignored and the KL summed over the batch, each in its own
    function: each fails a public test and its function's grading (and only its points)."""
    out = _fresh(jointvae_copy, tmp_path, "wrong")
    wrong = {"jointvae.kl_categorical_uniform": KL_REVERSED, "jointvae.sample_gumbel_softmax": NO_TEMPERATURE,
             "jointvae.jointvae_loss": KL_SUMMED}
    implement(out, {f: _solution_body(f, wrong.get(f)) for f in JOINTVAE})
    code, outcomes, log = _public_in_copy(out)
    failed = {t for t, o in outcomes.items() if o == "FAILED"}
    assert code == 1 and failed == {
        "test_kl_categorical_of_a_uniform_choice_among_m_of_k",
        "test_kl_categorical_is_zero_at_uniform_bounded_by_log_k_and_adds_over_independent_variables",
        "test_gumbel_softmax_is_one_hot_when_cold_and_uniform_when_hot",
        "test_loss_terms_are_batch_means"}, log[-3000:]
    assert set(outcomes.values()) == {"PASSED", "FAILED"}
    code, stdout, res, table = _grade(out, tmp_path)
    assert code == 1, stdout[-3000:]
    earned = {"jointvae.reparameterize": 1, "jointvae.linear_capacity": 1}
    _check_gradescope(res, earned, JOINTVAE)
    assert res["score"] == 2 and table["score"] == 2 and table["functions_passed"] == 2
    tests = {t["name"].split(" ")[0]: t["output"] for t in res["tests"]}
    kl = tests["jointvae.kl_categorical_uniform"]
    assert "FAILED test_categorical_kl_matches_the_closed_form" in kl and "got [" in kl and "expected [" in kl, kl
    assert "FAILED test_gumbel_softmax_log_ratios_are_logistic_at_every_temperature" in \
        tests["jointvae.sample_gumbel_softmax"]
    loss = tests["jointvae.jointvae_loss"]
    assert "FAILED test_eq7_terms_are_batch_means_and_add_up" in loss and "expected" in loss, loss
