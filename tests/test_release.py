"""benchmarks/release.py: float16 weights + manifest entry, atomic, validated; a failure
is one sentence and leaves no weights file without its manifest entry."""

import errno
import importlib.util
import json
import os

import pytest
import torch

import btcvae

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("release", os.path.join(ROOT, "benchmarks", "release.py"))
release = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(release)


def _run(folder, seed=0, dataset="shapes", step=20, method="btcvae"):
    """A finished run folder: checkpoint (model, optimiser, config, step), config, metrics."""
    os.makedirs(folder)
    model = {"enc.weight": torch.randn(4, 3), "enc.bias": torch.randn(4), "count": torch.tensor(7)}
    cfg = {"dataset": dataset, "seed": seed, "train_split": "train", "out": folder, "data_dir": "data"}
    torch.save(dict(model=model, optimizer={}, step=step, config=cfg, method=method),
               os.path.join(folder, "checkpoint.pt"))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    with open(os.path.join(folder, "metrics.json"), "w") as f:
        json.dump({"mig": 0.125, "eval_split": "train", "n_eval": 300, "figures": ["a.png"], "ok": True}, f)
    return folder


def _snapshot(folder):
    if not os.path.isdir(folder):
        return {}
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))}


def test_release_writes_float16_weights_and_the_manifest_entry(tmp_path):
    run, weights = _run(str(tmp_path / "run"), seed=3), str(tmp_path / "weights")
    path, entry = release.release(run, "btcvae", weights, protocol="p", command="python btcvae.py ...")
    assert path == os.path.join(weights, "btcvae-shapes-s3.pt")
    saved = torch.load(path, weights_only=True)
    assert saved["model"]["enc.weight"].dtype == torch.float16 and saved["model"]["count"].dtype == torch.int64
    assert saved["step"] == 20 and saved["method"] == "btcvae"
    assert "out" not in saved["config"] and "data_dir" not in saved["config"] and saved["config"]["seed"] == 3
    assert entry == dict(file="btcvae-shapes-s3.pt", name="btcvae", method="btcvae", dataset="shapes", seed=3,
                         updates=20, train_split="train", eval_split="train", n_eval=300,
                         metrics={"mig": 0.125, "n_eval": 300}, protocol="p", command="python btcvae.py ...")
    manifest = json.load(open(os.path.join(weights, "manifest.json")))
    assert manifest["weights"] == [entry] and "--pretrained" in manifest["note"]
    assert sorted(os.listdir(weights)) == ["btcvae-shapes-s3.pt", "manifest.json"]    # no temp file
    # a second seed and a named variant add entries; releasing seed 3 again replaces its entry
    release.release(_run(str(tmp_path / "run0"), seed=0), "btcvae", weights, name="betavae")
    release.release(run, "btcvae", weights, protocol="again")
    entries = json.load(open(os.path.join(weights, "manifest.json")))["weights"]
    assert [(e["file"], e.get("protocol")) for e in entries] == [("betavae-shapes-s0.pt", None),
                                                                 ("btcvae-shapes-s3.pt", "again")]


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


CORRUPT = {
    "metrics.json torn": (lambda run, w: _write(os.path.join(run, "metrics.json"), '{"mig": 0.1'),
                          "metrics.json is not valid JSON ("),
    "metrics.json a list": (lambda run, w: _write(os.path.join(run, "metrics.json"), "[1, 2]"),
                            "metrics.json holds a JSON list, not the dict expected"),
    "no metrics.json": (lambda run, w: os.remove(os.path.join(run, "metrics.json")),
                        "has no metrics.json: only finished, evaluated runs are released."),
    "config.json torn": (lambda run, w: _write(os.path.join(run, "config.json"), '{"seed"'),
                         "config.json is not valid JSON ("),
    "no checkpoint": (lambda run, w: os.remove(os.path.join(run, "checkpoint.pt")),
                      "has metrics.json but no checkpoint.pt"),
    "checkpoint garbage": (lambda run, w: _write(os.path.join(run, "checkpoint.pt"), "not a checkpoint"),
                           "checkpoint.pt (UnpicklingError); it is not a PyTorch checkpoint or it is corrupt."),
    "checkpoint without step": (lambda run, w: torch.save({"model": {}, "config": {}}, os.path.join(run, "checkpoint.pt")),
                                "checkpoint.pt has no `step` field"),
    "config without dataset": (lambda run, w: torch.save({"model": {}, "config": {"seed": 0}, "step": 1},
                                                         os.path.join(run, "checkpoint.pt")),
                               "checkpoint.pt: field `config` has no `dataset`"),
    "another script's checkpoint": (lambda run, w: torch.save({"model": {}, "config": {"seed": 0, "dataset": "x"},
                                                               "step": 1, "method": "jointvae"},
                                                              os.path.join(run, "checkpoint.pt")),
                                    "was written by jointvae.py, not btcvae.py"),
    "manifest torn": (lambda run, w: _write(os.path.join(w, "manifest.json"), '{"weights": [{"file": '),
                      "manifest.json is not valid JSON ("),
    "manifest without weights": (lambda run, w: _write(os.path.join(w, "manifest.json"), '{"note": "x"}'),
                                 "manifest.json has no `weights` list (field `weights`)"),
    "entry without file": (lambda run, w: _write(os.path.join(w, "manifest.json"),
                                                 '{"weights": [{"name": "a", "method": "a", "dataset": "d", "seed": 0}]}'),
                           "manifest.json: entry 0 of `weights` has no `file` field"),
    "entry without seed": (lambda run, w: _write(os.path.join(w, "manifest.json"),
                                                 '{"weights": [{"file": "a-d-s0.pt", "name": "a", "method": "a", '
                                                 '"dataset": "d"}]}'),
                           "manifest.json: a-d-s0.pt (entry 0 of `weights`) has no `seed` field"),
}


@pytest.mark.parametrize("fault", sorted(CORRUPT))
def test_a_corrupt_input_is_one_sentence_and_nothing_is_written(fault, tmp_path):
    run, weights = _run(str(tmp_path / "run")), str(tmp_path / "weights")
    os.makedirs(weights)
    damage, said = CORRUPT[fault]
    damage(run, weights)
    before = _snapshot(weights)
    with pytest.raises(release.ReleaseError) as err:
        release.release(run, "btcvae", weights)
    msg = str(err.value)
    assert said in msg and len(msg.splitlines()) == 1
    assert os.path.join(tmp_path, "") in msg                                  # names the file
    assert _snapshot(weights) == before


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")])
def test_a_full_disk_while_saving_the_weights_keeps_everything_as_it_was(error, tmp_path, monkeypatch):
    weights = str(tmp_path / "weights")
    release.release(_run(str(tmp_path / "old"), seed=1), "btcvae", weights)
    new = _run(str(tmp_path / "new"), seed=2)
    before = _snapshot(weights)
    real_save = torch.save

    def full(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a file")                                 # the disk fills mid-write
        raise error

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(release.ReleaseError) as err:
        release.release(new, "btcvae", weights)
    monkeypatch.setattr(torch, "save", real_save)
    msg = str(err.value)
    assert msg.startswith(f"could not write {weights}/btcvae-shapes-s2.pt (")
    assert ("No space left on device" if isinstance(error, OSError) else "PytorchStreamWriter failed") in msg
    assert "the previous file is kept" in msg and len(msg.splitlines()) == 1
    assert _snapshot(weights) == before                                       # no .tmp, no new file, same manifest


def _fail_second_fsync(monkeypatch):
    """The disk is full by the time the manifest (the second file) is fsync'ed."""
    real, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(release.os, "fsync", fsync)


def test_a_failed_manifest_write_removes_the_new_weights(tmp_path, monkeypatch):
    weights = str(tmp_path / "weights")
    release.release(_run(str(tmp_path / "old"), seed=1), "btcvae", weights)
    before = _snapshot(weights)
    _fail_second_fsync(monkeypatch)
    with pytest.raises(release.ReleaseError) as err:
        release.release(_run(str(tmp_path / "new"), seed=2), "btcvae", weights)
    msg = str(err.value)
    assert msg.startswith(f"could not write {weights}/manifest.json (No space left on device)")
    assert msg.endswith("btcvae-shapes-s2.pt was removed again, so no weights file lacks its manifest entry.")
    assert _snapshot(weights) == before


def test_a_failed_manifest_write_restores_the_previously_released_file(tmp_path, monkeypatch):
    weights = str(tmp_path / "weights")
    release.release(_run(str(tmp_path / "old"), seed=1), "btcvae", weights)
    before = _snapshot(weights)
    _fail_second_fsync(monkeypatch)
    with pytest.raises(release.ReleaseError) as err:
        release.release(_run(str(tmp_path / "new"), seed=1, step=40), "btcvae", weights)   # the same file name
    assert "btcvae-shapes-s1.pt is back to the previously released file" in str(err.value)
    assert _snapshot(weights) == before
    assert torch.load(os.path.join(weights, "btcvae-shapes-s1.pt"), weights_only=True)["step"] == 20


def test_released_float16_weights_evaluate_to_the_manifest_metrics(tmp_path):
    """End to end with a real tiny run: --pretrained finds the released file by its name and
    its evaluation reproduces the metrics recorded in the manifest."""
    base = ["--dataset", "shapes", "--batch-size", "16", "--log-every", "10", "--eval-samples", "300",
            "--metric-votes", "10", "--decomp-samples", "50", "--no-progress", "--device", "cpu"]
    run, weights = str(tmp_path / "run"), str(tmp_path / "weights")
    btcvae.main(base + ["--iterations", "20", "--out", run, "--seed", "2"])
    path, entry = release.release(run, "btcvae", weights, protocol="test", command="python ...")
    assert os.path.basename(path) == "btcvae-shapes-s2.pt" and entry["updates"] == 20
    assert os.path.getsize(path) < 0.25 * os.path.getsize(os.path.join(run, "checkpoint.pt"))
    res = btcvae.main(base + ["--pretrained", "--seed", "2", "--weights-dir", weights, "--out", str(tmp_path / "ev")])
    checked = [k for k in ("factor_vae_score", "mig") if entry["metrics"].get(k) is not None]
    assert checked and all(abs(res[k] - entry["metrics"][k]) <= 0.002 for k in checked)
    # The training log travels with the weights, and --pretrained draws the KL during training from it.
    assert entry["log"] == os.path.join("evals", "run", "log.csv")
    assert open(os.path.join(weights, entry["log"])).read() == open(os.path.join(run, "log.csv")).read()
    assert os.path.isfile(tmp_path / "ev" / "kl_during_training.png")
    # --eval-only draws it from the checkpoint's run folder, never from a log.csv beside a bare file.
    btcvae.main(base + ["--eval-only", "--checkpoint", run, "--out", str(tmp_path / "ev2")])
    assert os.path.isfile(tmp_path / "ev2" / "kl_during_training.png")
    os.makedirs(tmp_path / "bare")
    torch.save(torch.load(os.path.join(run, "checkpoint.pt"), weights_only=True), tmp_path / "bare" / "checkpoint.pt")
    with open(tmp_path / "bare" / "log.csv", "w") as f:
        f.write(open(os.path.join(run, "log.csv")).read())
    btcvae.main(base + ["--eval-only", "--checkpoint", str(tmp_path / "bare" / "checkpoint.pt"),
                        "--out", str(tmp_path / "ev3")])
    assert not os.path.exists(tmp_path / "ev3" / "kl_during_training.png")
