"""benchmarks/trajectory.py: merging evaluations into a run's evals.csv (or, once the run is
released and its folder removed, into the copy kept with its weights) and the authors' rule."""

import csv
import importlib.util
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("trajectory_benchmark", os.path.join(ROOT, "benchmarks", "trajectory.py"))
trajectory = importlib.util.module_from_spec(_spec)
sys.modules["trajectory_benchmark"] = trajectory
_spec.loader.exec_module(trajectory)


def _write(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "accuracy_hungarian", "accuracy_majority"])
        w.writerows(rows)


def _steps(path):
    with open(path, newline="") as f:
        return [(int(r["step"]), r["accuracy_hungarian"]) for r in csv.DictReader(f)]


def test_merge_adds_missing_steps_in_order_and_keeps_the_rows_it_has(tmp_path):
    run = tmp_path / "mnist-accuracy" / "cascadevae-s0"
    _write(str(run / "evals.csv"), [(10000, 0.79, 0.79), (30000, 0.81, 0.81)])
    results = [dict(step=20000, accuracy_hungarian=0.8, accuracy_majority=0.85),
               dict(step=30000, accuracy_hungarian=0.5, accuracy_majority=0.5)]        # a step it has: kept
    assert trajectory.merge(str(run), results)
    assert _steps(str(run / "evals.csv")) == [(10000, "0.79"), (20000, "0.8"), (30000, "0.81")]
    assert not os.path.exists(run / ".lock")


def test_a_released_run_merges_into_the_copy_kept_with_its_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(trajectory, "ROOT", str(tmp_path))
    kept = tmp_path / "results" / "weights" / "evals" / "mnist-accuracy" / "cascadevae-s0" / "evals.csv"
    _write(str(kept), [(10000, 0.79, 0.79), (120000, 0.84, 0.84)])
    gone = tmp_path / "results" / "runs" / "mnist-accuracy" / "cascadevae-s0"          # removed by the release
    assert trajectory.evals_path(str(gone)) == str(kept)
    assert trajectory.merge(str(gone), [dict(step=60000, accuracy_hungarian=0.842, accuracy_majority=0.842)])
    assert _steps(str(kept)) == [(10000, "0.79"), (60000, "0.842"), (120000, "0.84")]
    assert not gone.exists() and not os.path.exists(kept.parent / ".lock")
    with pytest.raises(SystemExit, match="does not exist and no released evals.csv"):
        trajectory.evals_path(str(tmp_path / "results" / "runs" / "mnist-accuracy" / "cascadevae-s7"))


def test_best_of_uses_only_the_multiples_of_10000():
    rows = [dict(step="5000", accuracy_hungarian="0.9"), dict(step="10000", accuracy_hungarian="0.7"),
            dict(step="25527", accuracy_hungarian="0.95"), dict(step="20000", accuracy_hungarian="0.8"),
            dict(step="30000", accuracy_hungarian="")]
    assert trajectory.best_of(rows) == (0.8, 20000)
    assert trajectory.best_of(rows[:1]) == (None, None)
