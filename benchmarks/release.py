"""Release a finished run: its model as float16 weights in results/weights/ and an entry in
results/weights/manifest.json. A maintainer tool, called by `benchmarks/reproduce.py --release`;
the method scripts only read what it writes (`--pretrained`, runs.pretrained_path).

    results/weights/<name>-<dataset>-s<seed>.pt   {"model": float16 state dict, "config", "step", "method"}
    results/weights/manifest.json                 {"note": ..., "weights": [entry, ...]}

The rules:
  * everything it reads is checked first (metrics.json, config.json, checkpoint.pt,
    manifest.json): a corrupt or incomplete file is one sentence (ReleaseError) naming the
    file and the field, and nothing is written;
  * every write is atomic (a temp file unique to this process, fsync, os.replace): a full
    disk or a failing torch.save leaves the previous file intact and no temp file behind;
  * the weights file is written first and the manifest entry last; if the manifest cannot
    be written, the weights file is put back as it was (removed, or the previously released
    file restored), so no released file exists without its manifest entry.
"""

import json
import os
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEIGHTS_DIR = os.path.join(ROOT, "results", "weights")

NOTE = ("Released float16 weights of finished runs; metrics as measured by the run's own evaluation "
        "(float32) on eval_split. Evaluate one with: python <method>.py --dataset D --seed S --pretrained.")
# Fields every manifest entry needs: runs.pretrained_path lists (name, dataset, seed), and a
# release replaces the entry with the same file.
ENTRY_FIELDS = ("file", "name", "method", "dataset", "seed")
# Config keys that describe one invocation or one machine, not the model.
DROPPED_CONFIG_KEYS = ("resume", "resume_changes", "out", "checkpoint", "data_dir")

_UMASK = os.umask(0)
os.umask(_UMASK)


class ReleaseError(RuntimeError):
    """A file that cannot be read or written, said in one sentence (file, field, what to do)."""


def weights_name(name, dataset, seed):
    """The file name runs.pretrained_path looks up: <name>-<dataset>-s<seed>.pt."""
    return f"{name}-{dataset}-s{seed}.pt"


# ---------------------------------------------------------------------------
# Atomic files
# ---------------------------------------------------------------------------

def _reason(err):
    if isinstance(err, OSError):
        return err.strerror or str(err) or type(err).__name__
    lines = str(err).strip().splitlines()
    return (lines[0][:160] if lines else "") or type(err).__name__


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def atomic_write(path, write, binary=False):
    """Write `path` through write(file): a temp file in the same folder, unique to this
    process, flushed and fsync'ed, then os.replace. An OSError (a full disk) or a
    RuntimeError (torch.save's failed writes) becomes one ReleaseError sentence; the previous
    file is kept and the temp file removed."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.{os.getpid()}.", suffix=".tmp")
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a released file is an ordinary file
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        if tmp is not None:
            _remove(tmp)
        raise ReleaseError(f"could not write {path} ({_reason(err)}); the previous file is kept — "
                           "free some disk space (or fix the folder's permissions) and run again.") from None
    except BaseException:
        if tmp is not None:
            _remove(tmp)
        raise


def write_json(path, obj):
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2) + "\n"))


def read_json(path, kind=dict):
    """The JSON in `path`, which must be a `kind`; else one ReleaseError sentence naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except json.JSONDecodeError as err:
        raise ReleaseError(f"{path} is not valid JSON ({err.msg} at line {err.lineno} column {err.colno}); "
                           "the file is corrupt or was cut short.") from None
    except UnicodeDecodeError:
        raise ReleaseError(f"{path} is not valid JSON (it is not UTF-8 text); the file is corrupt.") from None
    except OSError as err:
        raise ReleaseError(f"could not read {path} ({_reason(err)}).") from None
    if not isinstance(obj, kind):
        raise ReleaseError(f"{path} holds a JSON {type(obj).__name__}, not the {kind.__name__} expected; "
                           "the file is corrupt.")
    return obj


# ---------------------------------------------------------------------------
# The manifest
# ---------------------------------------------------------------------------

def read_manifest(weights_dir=WEIGHTS_DIR):
    """The manifest's entries ([] without a manifest), each checked for ENTRY_FIELDS."""
    path = os.path.join(weights_dir, "manifest.json")
    if not os.path.isfile(path):
        return []
    manifest = read_json(path)
    entries = manifest.get("weights")
    if not isinstance(entries, list):
        raise ReleaseError(f"{path} has no `weights` list (field `weights`); "
                           "restore it with `git checkout` or fix it by hand.")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ReleaseError(f"{path}: entry {i} of `weights` is a JSON {type(entry).__name__}, not an object; "
                               "restore the file with `git checkout` or fix that entry by hand.")
        for field in ENTRY_FIELDS:
            value = entry.get(field)
            if value is None or value == "" or (field == "file" and not isinstance(value, str)):
                label = f"{entry['file']} (entry {i} of `weights`)" if field != "file" else f"entry {i} of `weights`"
                raise ReleaseError(f"{path}: {label} has no `{field}` field; "
                                   "restore the file with `git checkout` or fix that entry by hand.")
    return entries


# ---------------------------------------------------------------------------
# What a run folder holds
# ---------------------------------------------------------------------------

def read_metrics(run_dir):
    path = os.path.join(run_dir, "metrics.json")
    if not os.path.isfile(path):
        raise ReleaseError(f"{run_dir} has no metrics.json: only finished, evaluated runs are released.")
    return read_json(path)


def load_checkpoint(run_dir, method):
    """The run's training checkpoint (torch.load, weights_only), checked for the fields a
    release uses: model (tensors), config (dataset, seed), step, and the method."""
    import torch

    path = os.path.join(run_dir, "checkpoint.pt")
    if not os.path.isfile(path):
        raise ReleaseError(f"{run_dir} has metrics.json but no checkpoint.pt, so there is no model to release; "
                           "restore checkpoint.pt or train the run again.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: one sentence, not a pickle trace
        raise ReleaseError(f"could not read {path} ({type(err).__name__}); it is not a PyTorch checkpoint "
                           "or it is corrupt.") from None
    if not isinstance(ckpt, dict):
        raise ReleaseError(f"{path} is not a training checkpoint (a {type(ckpt).__name__}, not a dict).")
    for field in ("model", "config", "step"):
        if field not in ckpt:
            raise ReleaseError(f"{path} has no `{field}` field; it is not a {method}.py training checkpoint.")
    model, cfg = ckpt["model"], ckpt["config"]
    if not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
        raise ReleaseError(f"{path}: field `model` is not a state dict of tensors.")
    if not isinstance(cfg, dict):
        raise ReleaseError(f"{path}: field `config` is not a dict.")
    for field in ("dataset", "seed"):
        if cfg.get(field) is None:
            raise ReleaseError(f"{path}: field `config` has no `{field}`; it is not a {method}.py training checkpoint.")
    if isinstance(ckpt["step"], bool) or not isinstance(ckpt["step"], int):
        raise ReleaseError(f"{path}: field `step` is not an integer.")
    stored = ckpt.get("method")
    if stored is not None and stored != method:
        raise ReleaseError(f"{path} was written by {stored}.py, not {method}.py; release it as {stored}.")
    return ckpt


# ---------------------------------------------------------------------------
# Release
# ---------------------------------------------------------------------------

def release(run_dir, method, weights_dir=WEIGHTS_DIR, name=None, **provenance):
    """Write a finished run's model as float16 weights (with the config that rebuilds it)
    and record it in manifest.json with the metrics its run measured, on which split, and
    `provenance` (protocol, command, run, wall time, device). Returns (path, entry).
    Raises ReleaseError (one sentence) and then has changed nothing."""
    import torch

    res = read_metrics(run_dir)
    if os.path.isfile(os.path.join(run_dir, "config.json")):
        read_json(os.path.join(run_dir, "config.json"))  # a damaged folder is not released
    ckpt = load_checkpoint(run_dir, method)
    entries = read_manifest(weights_dir)                   # before anything is written
    cfg = ckpt["config"]
    label = name or method
    fname = weights_name(label, cfg["dataset"], cfg["seed"])
    path = os.path.join(weights_dir, fname)
    try:
        os.makedirs(weights_dir, exist_ok=True)
    except OSError as err:
        raise ReleaseError(f"could not create {weights_dir} ({_reason(err)}).") from None

    # float16 halves the files; a test checks that the metrics survive the rounding.
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in ckpt["model"].items()}
    keep = {k: v for k, v in cfg.items() if k not in DROPPED_CONFIG_KEYS}
    scalar = {k: v for k, v in res.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    entry = dict(file=fname, name=label, method=method, dataset=cfg["dataset"], seed=cfg["seed"],
                 updates=int(ckpt["step"]), train_split=cfg.get("train_split"), eval_split=res.get("eval_split"),
                 n_eval=res.get("n_eval"), metrics=scalar, **provenance)
    entries = [e for e in entries if e["file"] != fname] + [entry]
    entries.sort(key=lambda e: (str(e["method"]), str(e["dataset"]), str(e["seed"])))

    # 1. the weights. A file released before under this name is kept (hard link) until the
    #    manifest names the new one, so a failure below can put it back.
    previous = None
    if os.path.isfile(path):
        previous = f"{path}.{os.getpid()}.previous"
        try:
            _remove(previous)
            os.link(path, previous)
        except OSError:
            previous = None                                # no hard links here: nothing to restore
    try:
        atomic_write(path, lambda f: torch.save(dict(model=state, config=keep, step=int(ckpt["step"]),
                                                     method=method), f), binary=True)
    except ReleaseError:
        if previous is not None:
            _remove(previous)
        raise
    # 1b. kept with the release in evals/<run>/: the run's trajectory (evals.csv, written by
    #     --eval-every) and its training log (log.csv, from which --pretrained draws the KL
    #     during training).
    kept_dir = os.path.join("evals", provenance.get("run") or os.path.basename(os.path.normpath(run_dir)))
    for record, key in (("evals.csv", "evals"), ("log.csv", "log")):
        source = os.path.join(run_dir, record)
        if not os.path.isfile(source):
            continue
        rel = os.path.join(kept_dir, record)
        with open(source) as f:
            text = f.read()
        try:
            os.makedirs(os.path.join(weights_dir, kept_dir), exist_ok=True)
        except OSError as err:
            raise ReleaseError(f"could not create {os.path.join(weights_dir, kept_dir)} ({_reason(err)}).") from None
        atomic_write(os.path.join(weights_dir, rel), lambda f, text=text: f.write(text))
        entry[key] = rel
    # 2. the manifest entry, last.
    try:
        write_json(os.path.join(weights_dir, "manifest.json"), dict(note=NOTE, weights=entries))
    except ReleaseError as err:
        if previous is not None:
            os.replace(previous, path)                      # the released file its entry describes
            undone = f"{fname} is back to the previously released file"
        else:
            _remove(path)
            undone = f"{fname} was removed again"
        raise ReleaseError(f"{str(err).rstrip('.')}; {undone}, so no weights file lacks its manifest entry.") from None
    if previous is not None:
        _remove(previous)
    return path, entry


# ---------------------------------------------------------------------------
# The README's table of released models: generated, so it cannot drift from the manifest
# ---------------------------------------------------------------------------

README_BEGIN = "<!-- released-models: generated from results/weights/manifest.json by `python benchmarks/release.py --readme` -->"
README_END = "<!-- /released-models -->"
METHOD_NAMES = {"jointvae": "JointVAE", "btcvae": "beta-TCVAE", "cascadevae": "CascadeVAE"}
# A released name other than its method's is chosen by a flag of the method's script (btcvae.py
# --beta-vae B loads "betavae"): the flag, its value read from the entry's training command.
NAME_FLAGS = {"betavae": ("beta-VAE", "--beta-vae")}


def _pretrained_command(e):
    flags = ""
    if e["name"] in NAME_FLAGS:
        flag = NAME_FLAGS[e["name"]][1]
        words = str(e.get("command", "")).split()
        value = words[words.index(flag) + 1] if flag in words[:-1] else None
        if value is None:
            raise ReleaseError(f"manifest entry {e['file']}: its `command` has no {flag} VALUE, which "
                               f"--pretrained needs to load the {e['name']} weights; fix that entry.")
        flags = f" {flag} {value}"
    return f"python {e['method']}.py --dataset {e['dataset']}{flags} --seed {e['seed']} --pretrained"


def _pct(metrics, key):
    value = metrics.get(key)
    return "-" if value is None else f"{100 * value:.2f}"


def _fraction(entry):
    """' (1/6 of the paper protocol, schedules scaled)' for a model trained on part of its protocol."""
    if not entry.get("protocol_fraction"):
        return ""
    return (f" ({entry['protocol_fraction']} of the paper protocol"
            + (", schedules scaled" if entry.get("schedules_scaled") else "") + ")")


def readme_table(entries):
    """Markdown rows of the released models: what each is, its training, its metrics."""
    rows = ["| model | data (train / eval split) | seed | updates | accuracy Hungarian / majority (%) | "
            "reconstruction (nats) | training wall time | command |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for e in sorted(entries, key=lambda e: (e["method"], e["dataset"], e["name"], e["seed"])):
        m = e.get("metrics", {})
        wall = e.get("wall_seconds")
        recon = "-" if m.get("recon_eval") is None else f"{m['recon_eval']:.1f}"
        wall = "-" if wall is None else f"{wall / 60:.1f} min ({e.get('device', '?')})"
        if e["name"] in NAME_FLAGS:
            name = NAME_FLAGS[e["name"]][0]                                   # beta-VAE
        else:
            name = METHOD_NAMES.get(e["method"], e["method"]) + ("" if e["name"] == e["method"] else f" ({e['name']})")
        rows.append(f"| {name} | {e['dataset']} ({e.get('train_split', '?')} / {e.get('eval_split', '?')}) "
                    f"| {e['seed']} | {e.get('updates', 0):,}{_fraction(e)} | {_pct(m, 'accuracy_hungarian')} / "
                    f"{_pct(m, 'accuracy_majority')} | {recon} | {wall} "
                    f"| `{_pretrained_command(e)}` |")
    return "\n".join(rows)


def readme_block(weights_dir=WEIGHTS_DIR):
    return f"{README_BEGIN}\n{readme_table(read_manifest(weights_dir))}\n{README_END}"


def update_readme(path, weights_dir=WEIGHTS_DIR):
    """Rewrite the released-models block of README.md from the manifest; True if it changed."""
    text = open(path).read()
    i, j = text.find(README_BEGIN), text.find(README_END)
    if i < 0 or j < i:
        raise ReleaseError(f"{path} has no released-models block ({README_BEGIN} ... {README_END}).")
    new = text[:i] + readme_block(weights_dir) + text[j + len(README_END):]
    if new != text:
        atomic_write(path, lambda f: f.write(new))
    return new != text


if __name__ == "__main__":
    import argparse
    p = argparse.ArgumentParser(description="Write README.md's table of released models from the manifest.")
    p.add_argument("--readme", nargs="?", const=os.path.join(ROOT, "README.md"), default=os.path.join(ROOT, "README.md"),
                   metavar="PATH", help="the README to update (default: the repository's)")
    p.add_argument("--weights-dir", default=WEIGHTS_DIR)
    a = p.parse_args()
    try:
        print(f"{a.readme}: " + ("updated" if update_readme(a.readme, a.weights_dir) else "already up to date"))
    except (ReleaseError, OSError) as err:
        raise SystemExit(f"release.py: {err}") from None
