"""Nothing lost: one writer per run folder, evaluations that delete only what they wrote,
validation before any write, faults and signals in one sentence, checked checkpoint fields
and a NaN guard that keeps a good checkpoint (runs.py, through the scripts as a user runs them)."""

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import jointvae
import runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = ["--dataset", "shapes", "--batch-size", "16", "--log-every", "5", "--eval-samples", "300",
        "--metric-votes", "10", "--eval-batch-size", "256", "--no-progress", "--device", "cpu"]


def _digest(folder):
    return {name: hashlib.sha256(open(os.path.join(folder, name), "rb").read()).hexdigest()
            for name in sorted(os.listdir(folder))}


def _error(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        jointvae.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished, evaluated jointvae run (copied by each test that changes it)."""
    out = str(tmp_path_factory.mktemp("finished") / "run")
    jointvae.main(BASE + ["--iterations", "6", "--out", out])
    return out


def _copy(src, dst):
    subprocess.run(["cp", "-r", src, dst], check=True)
    return dst


def _live_process():
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


def test_a_folder_held_by_a_live_process_is_refused_and_untouched(finished, tmp_path, capsys):
    out = _copy(finished, str(tmp_path / "run"))
    holder = _live_process()
    try:
        with open(os.path.join(out, ".lock"), "w") as f:
            json.dump(dict(pid=holder.pid, host=runs.socket.gethostname()), f)
        before = _digest(out)
        for argv in (["--resume", out], BASE + ["--iterations", "4", "--out", out, "--overwrite"],
                     BASE + ["--iterations", "4", "--out", out],
                     ["--eval-only", "--checkpoint", out, "--out", out] + BASE):
            msg = _error(capsys, argv)
            assert "in use by process" in msg or "already holds a run" in msg, msg
            assert _digest(out) == before
        assert f"process {holder.pid}" in _error(capsys, ["--resume", out])
    finally:
        holder.kill()
        holder.wait()
    # The holder is dead now: its lock is stale and the resume takes it over.
    jointvae.main(["--resume", out, "--iterations", "8", "--no-eval", "--no-progress"])
    assert torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)["step"] == 8
    assert not os.path.exists(os.path.join(out, ".lock"))            # released at exit


def test_two_real_writers_one_folder(tmp_path, capsys):
    """A long run in a subprocess holds the folder: a second run, a resume and an overwrite
    are refused; SIGTERM makes the first checkpoint and exit 0, and the lock goes with it."""
    out = str(tmp_path / "run")
    first = subprocess.Popen([sys.executable, os.path.join(ROOT, "jointvae.py")] + BASE
                             + ["--iterations", "100000", "--out", out, "--save-every", "100000"],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not os.path.exists(os.path.join(out, ".lock")) and time.time() < deadline:
            time.sleep(0.2)
        assert os.path.exists(os.path.join(out, ".lock"))
        assert "in use by process" in _error(capsys, BASE + ["--iterations", "5", "--out", out])
        assert "in use by process" in _error(capsys, BASE + ["--iterations", "5", "--out", out, "--overwrite"])
        time.sleep(1.0)
        first.send_signal(signal.SIGTERM)
        stdout, stderr = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 0, stderr
    assert "SIGTERM received" in stdout and "--resume" in stdout
    assert not os.path.exists(os.path.join(out, ".lock"))
    assert torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)["step"] >= 1


def test_an_evaluation_never_writes_into_a_folder_of_other_files(finished, tmp_path, capsys):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "figure.png").write_bytes(b"not ours")
    (folder / "notes.txt").write_text("keep me")
    before = _digest(str(folder))
    for argv in (["--eval-only", "--checkpoint", finished, "--out", str(folder)] + BASE,):
        msg = _error(capsys, argv)
        assert "not an evaluation or run of jointvae.py" in msg
    assert _digest(str(folder)) == before


def test_a_resumed_finished_run_replaces_only_what_its_evaluation_listed(finished, tmp_path, capsys):
    out = _copy(finished, str(tmp_path / "run"))
    listed = json.load(open(os.path.join(out, "eval_files.json")))["files"]
    assert "metrics.json" in listed and "traversals.png" in listed and "checkpoint.pt" not in listed
    open(os.path.join(out, "mine.png"), "wb").write(b"a user's figure")
    before = _digest(out)
    # A bad evaluation flag: refused before anything is touched.
    assert "--eval-batch-size" in _error(capsys, ["--resume", out, "--eval-batch-size", "-5"])
    assert _digest(out) == before
    # A good resume of a finished run re-evaluates: the listed files are replaced, mine.png stays.
    jointvae.main(["--resume", out, "--no-progress", "--metric-votes", "12"])
    after = _digest(out)
    assert after["mine.png"] == before["mine.png"]
    assert json.load(open(os.path.join(out, "metrics.json")))["step"] == 6
    assert not [f for f in os.listdir(out) if f.startswith(".eval-") or f.endswith(".tmp")]


def test_a_full_disk_during_evaluation_leaves_the_folder_as_it_was(finished, tmp_path, capsys, monkeypatch):
    out = _copy(finished, str(tmp_path / "run"))
    before = _digest(out)
    real = runs.json.dump

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs.json, "dump", full)
    msg = _error(capsys, ["--resume", out, "--no-progress"])
    monkeypatch.setattr(runs.json, "dump", real)
    assert "No space left" in msg and "previous file is kept" in msg
    assert _digest(out) == before
    assert not [f for f in os.listdir(out) if f.startswith(".eval-") or f.endswith(".tmp") or f == ".lock"]


def test_sigterm_during_evaluation_is_one_sentence_and_changes_nothing(finished, tmp_path):
    out = _copy(finished, str(tmp_path / "run"))
    before = _digest(out)
    # A large evaluation (every image of the grid's subset) so that the signal lands in it.
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "jointvae.py"), "--resume", out, "--no-progress",
                             "--eval-samples", "20000", "--metric-votes", "800"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not [f for f in os.listdir(out) if f.startswith(".eval-")] and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    lines = stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, stderr
    assert "SIGTERM received during evaluation" in lines[0] and "keeps its previous evaluation" in lines[0]
    after = _digest(out)
    # config.json records the evaluation flags this resume applied; every other file is as it was.
    assert {k: v for k, v in after.items() if k != "config.json"} == \
        {k: v for k, v in before.items() if k != "config.json"}
    assert not [f for f in os.listdir(out) if f.startswith(".eval-") or f == ".lock"]


@pytest.mark.parametrize("field, value, words", [
    ("step", "12", "step"),
    ("step", 10 ** 6, "past the run's"),
    ("config", [1, 2], "config"),
    ("config.dataset", "../../../etc", "config.dataset"),
    ("config.disc", "10", "config.disc"),
    ("config.iterations", "6", "config.iterations"),
    ("rng", {"torch": 5}, "rng"),
    ("log_window", [1], "log_window"),
])
def test_bad_checkpoint_fields_are_one_sentence_naming_the_field(finished, tmp_path, capsys, field, value, words):
    out = _copy(finished, str(tmp_path / "run"))
    path = os.path.join(out, "checkpoint.pt")
    ck = torch.load(path, weights_only=True)
    if field.startswith("config."):
        ck["config"][field.split(".")[1]] = value
    else:
        ck[field] = value
    torch.save(ck, path)
    before = _digest(out)
    msg = _error(capsys, ["--resume", out])
    assert words in msg and path in msg, msg
    assert _digest(out) == before


def test_a_step_past_the_asked_length_is_refused(finished, tmp_path, capsys):
    out = _copy(finished, str(tmp_path / "run"))
    msg = _error(capsys, ["--resume", out, "--iterations", "3"])
    assert "past the 3 updates" in msg


@pytest.mark.parametrize("argv, words", [
    (["--lr", "1e39"], "--lr"),
    (["--eval-batch-size", "0"], "--eval-batch-size"),
    (["--seed", str(2 ** 64)], "too large"),
    (["--metric-votes", "0"], "--metric-votes"),
])
def test_late_flags_are_checked_before_the_old_run_is_overwritten(finished, tmp_path, capsys, argv, words):
    out = _copy(finished, str(tmp_path / "run"))
    before = _digest(out)
    msg = _error(capsys, BASE + ["--iterations", "4", "--out", out, "--overwrite"] + argv)
    assert words in msg
    assert _digest(out) == before


@pytest.mark.parametrize("value, words", [("nan", "finite"), ("-1e300", "--traversal-range"), ("0", "0 < R")])
def test_a_bad_traversal_range_is_refused_before_training(tmp_path, capsys, value, words):
    import cascadevae
    out = str(tmp_path / "run")
    with pytest.raises(SystemExit) as exc:
        cascadevae.main(BASE + ["--iterations", "4", "--out", out, f"--traversal-range={value}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and words in err[0], err
    assert not os.path.exists(out)


def test_nan_keeps_a_finite_checkpoint_from_before_the_update_that_blew_up(tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "run")
    real = jointvae.data.batches

    def poisoned(ds, batch_size, seed, start_step=0):
        for step, (idx, x) in enumerate(real(ds, batch_size, seed, start_step), start=start_step + 1):
            yield idx, (x * float("nan") if step == 7 else x)

    monkeypatch.setattr(jointvae.data, "batches", poisoned)
    msg = _error(capsys, BASE + ["--iterations", "20", "--save-every", "1", "--out", out])
    ck = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    assert "by step 7" in msg and f"checkpoint of step {ck['step']} is kept" in msg
    assert ck["step"] == 5                       # step 6's state is the one the NaN update may have made
    assert all(torch.isfinite(v).all() for v in ck["model"].values())
    assert all(torch.isfinite(t).all() for s in ck["optimizer"]["state"].values() for t in s.values()
               if isinstance(t, torch.Tensor) and t.is_floating_point())


def test_pretrained_loads_only_what_the_manifest_lists(tmp_path, capsys):
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "jointvae-shapes-s0.pt").write_bytes(b"unlisted")
    msg = _error(capsys, ["--dataset", "shapes", "--pretrained", "--weights-dir", str(weights)])
    assert "none are released yet" in msg
    for manifest, words in (("{not json", "manifest.json"), ('{"weights": 5}', "no list 'weights'"),
                            ('{"weights": [{"file": "x.pt"}]}', "'name'")):
        (weights / "manifest.json").write_text(manifest)
        msg = _error(capsys, ["--dataset", "shapes", "--pretrained", "--weights-dir", str(weights)])
        assert words in msg and "manifest" in msg
