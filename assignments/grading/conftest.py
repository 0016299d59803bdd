"""Grading tests: import the modules under test from the repository being graded.

    python -m pytest assignments/grading --repo /path/to/student/copy

--repo (or the environment variable ASSIGNMENT_REPO; default: this repository) is put
first on sys.path, so `jointvae`, `btcvae`, `cascadevae`, `metrics` and what they import
are the student's. A module that fails to import fails only the tests that use it.
--functions a,b runs only the tests of those marked functions; --grade-report PATH writes
one JSON record per test (function, outcome, the first line of the failure and the whole
failure message, with the values got and expected) for grade.py.
"""

import importlib
import json
import os
import signal
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_REPO = os.path.dirname(os.path.dirname(HERE))
STATE = {}                                                  # this session's repository and results


def pytest_addoption(parser):
    parser.addoption("--repo", default=None, help="repository to grade (default: $ASSIGNMENT_REPO or this one)")
    parser.addoption("--functions", default="", help="comma-separated marked functions to grade (default: all)")
    parser.addoption("--grade-report", default=None, help="write per-test results as JSON to this path")
    parser.addoption("--test-timeout", type=float, default=120.0,
                     help="seconds one grading test may take before it fails (a student's loop may not end)")


def pytest_configure(config):
    repo = os.path.abspath(config.getoption("--repo") or os.environ.get("ASSIGNMENT_REPO") or DEFAULT_REPO)
    STATE.update(repo=repo, results=[], functions={})
    os.environ.setdefault("MPLBACKEND", "Agg")
    sys.path.insert(0, repo)
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))


def _module(config, name):
    repo = STATE["repo"]
    mod = importlib.import_module(name)
    where = os.path.dirname(os.path.abspath(mod.__file__))
    if where != repo:
        raise ImportError(f"{name} was imported from {where}, not from the graded repository {repo}")
    return mod


@pytest.fixture(scope="session")
def jointvae(pytestconfig):
    return _module(pytestconfig, "jointvae")


@pytest.fixture(scope="session")
def btcvae(pytestconfig):
    return _module(pytestconfig, "btcvae")


@pytest.fixture(scope="session")
def cascadevae(pytestconfig):
    return _module(pytestconfig, "cascadevae")


@pytest.fixture(scope="session")
def metrics(pytestconfig):
    return _module(pytestconfig, "metrics")


def pytest_collection_modifyitems(config, items):
    wanted = {f for f in config.getoption("--functions").split(",") if f}
    keep, drop = [], []
    for item in items:
        function = getattr(getattr(item, "function", None), "grades", None)
        if function is None:
            raise pytest.UsageError(f"{item.nodeid} does not say which function it grades (@grades(...))")
        STATE["functions"][item.nodeid] = function
        (keep if not wanted or function in wanted else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    limit = item.config.getoption("--test-timeout")
    if not hasattr(signal, "SIGALRM") or limit <= 0:
        yield
        return

    def expire(signum, frame):
        raise TimeoutError(f"the test took longer than {limit:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


MAX_DETAIL = 4000                                           # characters of one failure message kept


def _message(report):
    """The failure's message: the exception line, with pytest's assertion rewrite below it."""
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    text = text.strip()
    return text if len(text) <= MAX_DETAIL else text[:MAX_DETAIL - 3] + "..."


def pytest_runtest_logreport(report):
    if report.when != "call" and report.outcome == "passed":
        return                                              # setup and teardown that went fine
    detail = "" if report.outcome == "passed" else _message(report)
    STATE["results"].append(dict(
        test=report.nodeid, function=STATE["functions"].get(report.nodeid), phase=report.when,
        outcome=report.outcome, message=detail.split("\n")[0], detail=detail))


def pytest_sessionfinish(session):
    path = session.config.getoption("--grade-report")
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(dict(repo=STATE["repo"], results=STATE["results"]), f, indent=1)
