"""Run folders: configs, exact resume, time budgets, one writer per folder.

A library of plain functions that the three method files call by name from their own
`main()`; nothing here calls back into a method file and nothing here touches an
equation. A run folder holds config.json, log.csv, checkpoint.pt (model, optimiser,
step, config, every RNG state and the unfinished log window), and after evaluation
metrics.json, the figures and eval_files.json (the list of what the evaluation wrote).

The rules a user can rely on:
  * the folder you name is the folder that is written: `--resume DIR` reads and writes
    DIR, never the folder stored in the checkpoint;
  * one writer per folder: a run holds DIR/.lock (pid and host) for its whole life, and
    a second run, a `--resume` or an `--overwrite` of a folder in use is refused; a lock
    left by a dead process on this host is taken over;
  * a new run never lands in a folder that holds a run, unless `--overwrite`, which
    deletes the old run's files only once the new run is known to start;
  * an evaluation replaces only the files that the previous evaluation listed in
    eval_files.json, and only once its own results are complete (it writes into a
    staging folder first); nothing is deleted by pattern;
  * on `--resume`, flags that only change how the run goes on are applied, a new
    learning rate is applied and recorded, and a flag that changes the model, the data or
    the objective is refused (or, with `--force-resume`, applied and recorded);
  * every file is written atomically (a per-process temp file, fsync, os.replace): a
    crash or a full disk leaves the previous file intact and no temp file behind.
"""

import argparse
import contextlib
import copy
import csv
import io
import json
import math
import os
import random
import shlex
import shutil
import signal
import socket
import sys
import threading
import time

import numpy as np
import torch

# Files that make a folder "a run": a new run refuses to start beside them.
RUN_FILES = ("checkpoint.pt", "log.csv", "config.json", "metrics.json")
# What `--overwrite` deletes of the old run (its evaluation files come from eval_files.json).
OLD_RUN_FILES = ("checkpoint.pt", "log.csv", "evals.csv", "config.json", "metrics.json", "eval_config.json",
                 "eval_files.json")

# Flags that change only how a resumed run goes on (length, logging, hardware, evaluation):
# applied on --resume. Every other key changes the model, the data or the objective.
CONTINUE_KEYS = frozenset({
    "iterations", "epochs", "log_every", "save_every", "no_progress", "device", "eval_samples",
    "eval_batch_size", "metric_votes", "no_eval", "time_budget", "data_dir", "download",
    "eval_split", "out", "resume", "checkpoint", "overwrite", "force_resume", "eval_only",
    "decomp_samples", "pretrained", "weights_dir", "traversal_range", "eval_every", "stop_at",
})

# Flags that hold for one invocation only: a resume does not inherit them from the run.
PER_INVOCATION = frozenset({"time_budget", "stop_at", "overwrite", "force_resume", "resume", "checkpoint",
                            "eval_only", "pretrained", "weights_dir"})

# The defaults of the flags add_run_flags defines (a script's DEFAULTS add its own).
RUN_DEFAULTS = dict(
    data_dir="data", download=True, train_split=None, eval_split=None, seed=0, device="auto", out=None,
    log_every=100, eval_samples=None, eval_batch_size=512, metric_votes=800, eval_only=False, checkpoint=None,
    resume=None, no_eval=False, no_progress=False, time_budget=None, overwrite=False, force_resume=False,
    pretrained=False, weights_dir=None, precision="fp32", eval_every=0, stop_at=None,
)

# The metrics an in-run evaluation prints (all of its scalars go to evals.csv).
EVAL_SHOWN = ("accuracy_hungarian", "accuracy_majority", "recon_eval", "mig", "factor_vae_score")

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "weights")


class RunError(RuntimeError):
    """A problem with a run folder, a checkpoint or a flag, said in one sentence."""


class Stopped(RuntimeError):
    """A stop signal arrived outside the training loop (during evaluation)."""


# ---------------------------------------------------------------------------
# One sentence per failure
# ---------------------------------------------------------------------------

@contextlib.contextmanager
def errors_as_sentences(prog):
    """Around a script's main(): every expected failure becomes one line on stderr and
    exit status 2 (no traceback)."""
    try:
        yield
    except (ValueError, OSError, FloatingPointError, RunError, OverflowError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2)
    finally:
        release_locks()


# ---------------------------------------------------------------------------
# Seeds and RNG state
# ---------------------------------------------------------------------------

def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def rng_state():
    np_state = np.random.get_state()  # ("MT19937", keys, pos, has_gauss, cached_gaussian)
    state = dict(torch=torch.get_rng_state(), python=random.getstate(),
                 numpy=torch.from_numpy(np_state[1].astype(np.int64)),
                 numpy_pos=int(np_state[2]), numpy_gauss=[int(np_state[3]), float(np_state[4])])
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state.get("numpy_pos", 624),
                         *state.get("numpy_gauss", [0, 0.0])))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def rng_isolated():
    """Run a block (an in-run evaluation) without moving any RNG the training draws from:
    every generator's state is put back afterwards, so a run with --eval-every trains
    bit for bit as one without."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# ---------------------------------------------------------------------------
# Atomic files
# ---------------------------------------------------------------------------

def _atomic_write(path, write, binary=False):
    """write(f) into a temp file unique to this process, fsync, then os.replace: the old
    file stays whole until the new one is complete. Any failure (a full disk: OSError,
    or torch.save's RuntimeError) is one sentence and leaves no temp file."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb" if binary else "w", newline=None if binary else "") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        reason = getattr(err, "strerror", None) or str(err).splitlines()[0][:120]
        raise RunError(f"could not write {path} ({reason}); the previous file is kept — "
                       "free some disk space or choose another --out.") from None


def write_json(path, obj):
    _atomic_write(path, lambda f: json.dump(obj, f, indent=2))


def read_json(path, what="file"):
    """A JSON file, or one sentence naming it."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise RunError(f"could not read {path} ({type(err).__name__}); the {what} is missing or corrupt.") from None


# ---------------------------------------------------------------------------
# Checkpoints: written atomically, read with every field checked
# ---------------------------------------------------------------------------

def checkpoint_path(path):
    return os.path.join(path, "checkpoint.pt") if os.path.isdir(path) else path


def run_dir_of(path):
    """The run folder of a `--resume` argument: the folder itself, or a checkpoint's folder."""
    return path if os.path.isdir(path) else (os.path.dirname(path) or ".")


def load_checkpoint(path, method=None):
    """torch.load(weights_only=True) of a checkpoint file; with `method`, check that it is a
    training checkpoint of that script with well-formed fields."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass a checkpoint.pt file or a run folder.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which, not a pickle trace
        raise RunError(f"could not read checkpoint {path} ({type(err).__name__}); "
                       "it is not a PyTorch checkpoint or it is corrupt.") from None
    if method is not None:
        check_training_checkpoint(ckpt, path, method)
    return ckpt


def check_training_checkpoint(ckpt, path, method):
    if not (isinstance(ckpt, dict) and {"model", "config", "step"} <= set(ckpt)):
        raise RunError(f"{path} is not a {method}.py training checkpoint (it has no model/config/step).")
    stored = ckpt.get("method") or _method_from_config(ckpt["config"])
    if stored is not None and stored != method:
        raise RunError(f"{path} was written by {stored}.py, not {method}.py; use python {stored}.py with it.")
    bad = _bad_field(ckpt)
    if bad:
        raise RunError(f"{path} has a bad field {bad}; the checkpoint is damaged — use another one.")


def _bad_field(ckpt):
    """The first malformed field of a training checkpoint, as 'name (why)', or None."""
    cfg, step = ckpt["config"], ckpt["step"]
    if not isinstance(cfg, dict):
        return "config (not a mapping)"
    if not isinstance(ckpt["model"], dict) or not all(isinstance(v, torch.Tensor) for v in ckpt["model"].values()):
        return "model (not a state_dict of tensors)"
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return f"step ({step!r} is not an integer >= 0)"
    for key in ("seed", "batch_size", "log_every", "save_every"):
        value = cfg.get(key)
        if key in cfg and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            return f"config.{key} ({value!r} is not an integer >= 0)"
    for key in ("iterations", "iterations_total"):
        value = cfg.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            return f"config.{key} ({value!r} is not an integer >= 0)"
    if cfg.get("iterations_total") is not None and step > cfg["iterations_total"]:
        return f"step ({step} is past the run's {cfg['iterations_total']} updates)"
    dataset = cfg.get("dataset")
    if dataset is not None and (not isinstance(dataset, str) or os.sep in dataset or dataset.startswith(".")):
        return f"config.dataset ({dataset!r})"
    for key in ("cont", "disc"):
        value = cfg.get(key)
        values = value if isinstance(value, list) else [value]
        if key in cfg and not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            return f"config.{key} ({value!r} is not a size)"
    rng = ckpt.get("rng")
    if rng is not None:
        if not (isinstance(rng, dict) and isinstance(rng.get("torch"), torch.Tensor)
                and isinstance(rng.get("numpy"), torch.Tensor) and rng["numpy"].numel() == 624
                and isinstance(rng.get("python"), (list, tuple))):
            return "rng (not the RNG states this code saves)"
    scaler = ckpt.get("scaler")
    if scaler is not None and not (isinstance(scaler, dict) and isinstance(scaler.get("scale"), (int, float))):
        return "scaler (not a gradient scaler's state)"
    window = ckpt.get("log_window")
    if window is not None:
        sums = window.get("sums") if isinstance(window, dict) else None
        if not isinstance(window, dict) or not (sums is None or isinstance(sums, torch.Tensor)) \
                or not isinstance(window.get("n", 0), int):
            return "log_window (not a log window)"
    return None


def _method_from_config(cfg):
    """Checkpoints written before the `method` key: tell the scripts apart by their keys."""
    if not isinstance(cfg, dict):
        return None
    for key, method in (("c_cont", "jointvae"), ("beta_h", "cascadevae"), ("estimator", "btcvae")):
        if key in cfg:
            return method
    return None


def checkpoint_state(model, optimizer, step, cfg, method, log_window=None, scaler=None):
    """Everything exact resume needs, copied to the CPU (the live tensors keep training);
    under fp16 the gradient scaler's scale and growth counter too."""
    state = dict(model={k: v.detach().cpu() for k, v in model.state_dict().items()},
                 optimizer=optimizer.state_dict(), step=int(step), config=cfg, rng=rng_state(),
                 method=method, log_window=log_window)
    if scaler is not None and scaler.is_enabled():
        state["scaler"] = scaler.state_dict()
    return copy.deepcopy(state)


def save_checkpoint(path, state):
    _atomic_write(path, lambda f: torch.save(state, f), binary=True)


def all_finite(model, optimizer):
    """Parameters and optimiser state hold no NaN or infinity (one host sync)."""
    tensors = list(model.parameters()) + [v for s in optimizer.state.values() for v in s.values()
                                          if isinstance(v, torch.Tensor) and v.is_floating_point()]
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def load_state_dict(model, state, path):
    """model.load_state_dict with a one-sentence error for a net of another shape."""
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = next((ln.strip() for ln in first[1:] if ln.strip()), first[0] if first else "")
        raise RunError(f"the weights in {path} do not fit this model ({detail[:160]}); "
                       "pass the same --dataset and latent sizes the run was trained with.") from None


# ---------------------------------------------------------------------------
# Released weights: results/weights/<name>-<dataset>-s<seed>.pt, listed in manifest.json
# (written by benchmarks/release.py)
# ---------------------------------------------------------------------------

def weights_name(name, dataset, seed):
    """`name` is the script, or a named variant of it (btcvae.py --beta-vae: "betavae")."""
    return f"{name}-{dataset}-s{seed}.pt"


def read_manifest(weights_dir=WEIGHTS_DIR):
    """The manifest's entries, each checked: a malformed one is one sentence naming the field."""
    path = os.path.join(weights_dir, "manifest.json")
    if not os.path.isfile(path):
        return []
    manifest = read_json(path, "manifest of released weights")
    entries = manifest.get("weights") if isinstance(manifest, dict) else None
    if not isinstance(entries, list):
        raise RunError(f"{path} has no list 'weights'; the manifest is corrupt.")
    for i, e in enumerate(entries):
        for key, kind in (("file", str), ("name", str), ("method", str), ("dataset", str), ("seed", int)):
            if not isinstance(e, dict) or not isinstance(e.get(key), kind) or isinstance(e.get(key), bool):
                raise RunError(f"{path}: entry {i} has no valid '{key}'; the manifest is corrupt.")
        if os.path.basename(e["file"]) != e["file"]:
            raise RunError(f"{path}: entry {i} names a file outside {weights_dir} ({e['file']!r}).")
    return entries


def pretrained_path(name, dataset, seed, weights_dir=WEIGHTS_DIR):
    """The released weights of (name, dataset, seed): only what the manifest lists, or one
    sentence naming those that exist."""
    entries = read_manifest(weights_dir)
    for e in entries:
        if (e["name"], e["dataset"], e["seed"]) == (name, dataset, seed):
            path = os.path.join(weights_dir, e["file"])
            if not os.path.isfile(path):
                raise FileNotFoundError(f"the manifest lists {e['file']} but {path} is missing; "
                                        "restore it from the repository (git checkout -- results/weights).")
            return path
    have = [f"--dataset {e['dataset']} --seed {e['seed']}" for e in entries if e["name"] == name]
    raise FileNotFoundError(f"no released {name} weights for --dataset {dataset} --seed {seed} in {weights_dir}; "
                            + (f"released: {', '.join(have)}." if have else "none are released yet."))


# ---------------------------------------------------------------------------
# Configs: DEFAULTS <- PRESETS[dataset] <- flags; on --resume the run's own config
# ---------------------------------------------------------------------------

def parser(prog, description):
    """A script's argument parser. Unset flags stay absent (SUPPRESS), so a script knows
    which flags the user gave."""
    return argparse.ArgumentParser(prog=prog, description=description, argument_default=argparse.SUPPRESS)


def add_run_flags(p, method, data_help):
    """The flags every script has: where the data is, the run folder, logging, evaluation,
    resuming. The method's own flags (latents, objective, optimiser, length) stay in its file."""
    p.add_argument("--data-dir", help=data_help)
    p.add_argument("--no-download", dest="download", action="store_false", help="never try to download")
    p.add_argument("--train-split", choices=["train", "test"], help="split to train on")
    p.add_argument("--eval-split", choices=["train", "test"], help="split to evaluate on")
    p.add_argument("--seed", type=int, help="seeds every generator; the run folder's default name has it")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--out", help=f"run folder (default runs/{method}-<dataset>-s<seed>)")
    p.add_argument("--log-every", type=int, help="updates between log.csv rows")
    p.add_argument("--save-every", type=int, help="updates between checkpoints")
    p.add_argument("--eval-samples", type=int, help="evaluate on a random subset of this many images (default all)")
    p.add_argument("--eval-batch-size", type=int, help="images per batch when encoding for evaluation")
    p.add_argument("--metric-votes", type=int, help="votes of the FactorVAE score (Jeong & Song supp. C: 800)")
    p.add_argument("--no-eval", action="store_true", help="skip evaluation after training")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--eval-only", action="store_true", help="evaluate --checkpoint, no training")
    p.add_argument("--checkpoint", help=f"{method}.py checkpoint (or run folder) to evaluate")
    p.add_argument("--pretrained", action="store_true",
                   help="evaluate the released model of --dataset/--seed (results/weights/), no training")
    p.add_argument("--weights-dir", help="where --pretrained looks (default: the repository's results/weights)")
    p.add_argument("--resume", help="run folder (or its checkpoint.pt) to continue training in, exactly")
    p.add_argument("--force-resume", action="store_true",
                   help="with --resume: apply flags that change the model, data or objective (recorded in the log)")
    p.add_argument("--overwrite", action="store_true", help="start a new run in an --out that holds one (deletes it)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"],
                   help="fp32 (the papers'); bf16 or fp16 (CUDA, with a gradient scaler): the networks under "
                        "autocast, every equation in fp32")
    p.add_argument("--time-budget", type=float, metavar="MINUTES",
                   help="stop after MINUTES with a checkpoint; continue with the same command and --resume")
    p.add_argument("--stop-at", type=int, metavar="UPDATE",
                   help="stop after update UPDATE with a checkpoint, like --time-budget (a slice that ends at a known step)")
    p.add_argument("--eval-every", type=int, metavar="N",
                   help="also evaluate every N updates (metrics only, the training RNG untouched) into OUT/evals.csv; "
                        "0: off")
    return p


def dataset_of(argv, default):
    """The --dataset an argv asks for (before the full parser exists: --help's defaults depend on it)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--dataset")
    known, _ = pre.parse_known_args(argv)
    return known.dataset or default


def show_defaults(p, defaults, preset, sources):
    """Append to every flag's help the value this --dataset uses and, for a preset value,
    the paper's table it comes from (`sources`: key -> citation)."""
    for action in p._actions:
        key = action.dest
        if key in ("help", "dataset") or key not in defaults or isinstance(
                action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            continue
        value = preset.get(key, defaults[key])
        if value is None:
            continue
        shown = " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) \
            if isinstance(value, (list, tuple)) else (f"{value:g}" if isinstance(value, float) else str(value))
        where = f", {sources[key]}" if key in preset and key in sources else ""
        action.help = (action.help + " " if action.help else "") + f"[default: {shown}{where}]"
    return p


def new_config(flags, method, defaults, presets, sources):
    """A new run's config: DEFAULTS <- PRESETS[dataset] <- the flags given; the splits of
    the data set and the run folder filled in. `sources`: data set -> its splits."""
    cfg = dict(defaults)
    cfg.update(presets[flags.get("dataset", cfg["dataset"])])
    cfg.update(flags)
    return fill_config(cfg, defaults, sources, method)


def fill_config(cfg, defaults, sources, method):
    """Fill what the flags leave open (in place): keys older runs lack, the data set's
    splits, and the run folder runs/<method>-<dataset>-s<seed> (an evaluation: -eval, the
    released weights: -pretrained-s<seed>)."""
    for key, value in defaults.items():
        cfg.setdefault(key, value)
    source = sources[cfg["dataset"]]
    cfg["train_split"] = cfg.get("train_split") or source["train_split"]
    cfg["eval_split"] = cfg.get("eval_split") or source["eval_split"]
    if cfg.get("out") is None:
        tag = (f"pretrained-s{cfg['seed']}" if cfg.get("pretrained") else
               "eval" if cfg["eval_only"] else f"s{cfg['seed']}")
        cfg["out"] = os.path.join("runs", f"{method}-{cfg['dataset']}-{tag}")
    return cfg


def stored_config(flags, method, legacy=None):
    """`--resume DIR`: the run's own config from its checkpoint (with `legacy` filling keys
    that runs written before a flag existed lack), after checking that DIR can be resumed."""
    resume_path = checkpoint_path(flags["resume"])
    run_dir = run_dir_of(flags["resume"])
    if "out" in flags and os.path.abspath(flags["out"]) != os.path.abspath(run_dir):
        raise RunError(f"--resume {flags['resume']} continues in {run_dir}; --out {flags['out']} "
                       "names another folder (copy the run folder there first to branch it).")
    ckpt = load_checkpoint(resume_path, method)
    if "rng" not in ckpt or ckpt["rng"] is None:
        raise RunError(f"{resume_path} holds no RNG state, so it cannot be resumed exactly; "
                       "evaluate it with --eval-only --checkpoint, or start a new run.")
    stored = dict(legacy or {}, **ckpt["config"])
    stored.pop("resume_changes", None)
    stored["resume"], stored["out"] = resume_path, run_dir
    return stored


def resumed_config(stored, flags, defaults, sources, method, force=False, log=print):
    """The config of a resumed run: the stored config, with the given flags that only change
    how the run goes on applied. A flag that changes the model, the data or the objective is
    refused, or with `force` applied; a new --lr is applied. cfg["resume_changes"] maps each
    applied key of that kind and `lr` to (old, new)."""
    base = fill_config(dict(stored), defaults, sources, method)
    cfg = {k: v for k, v in base.items() if k not in PER_INVOCATION}
    cfg.update(flags)
    cfg["resume"], cfg["out"] = stored["resume"], stored["out"]
    fill_config(cfg, defaults, sources, method)
    changed = {k: (base.get(k), cfg[k]) for k in cfg
               if k not in CONTINUE_KEYS and k in flags and _differs(base.get(k), cfg[k])}
    lr_change = changed.pop("lr", None)
    if changed and not force:
        listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in sorted(changed.items()))
        raise RunError(f"--resume would change what the run trains ({listed}); resume with the run's own "
                       "settings, start a new run in another --out, or pass --force-resume to apply the changes.")
    if changed:
        log("force-resume: applying " + "; ".join(f"{k}: {o!r} -> {n!r}" for k, (o, n) in sorted(changed.items())))
    if lr_change:
        changed["lr"] = lr_change
    cfg["resume_changes"] = changed
    return cfg


def _differs(a, b):
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) != len(b) or any(_differs(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) != float(b)
    return a != b


def use_pretrained(cfg, name):
    """--pretrained: evaluate the released weights `name` of (dataset, seed), like
    --eval-only --checkpoint."""
    if cfg.get("pretrained"):
        cfg["checkpoint"] = pretrained_path(name, cfg["dataset"], cfg["seed"], cfg.get("weights_dir") or WEIGHTS_DIR)
        cfg["eval_only"] = True
    return cfg


def training_log(cfg):
    """The log.csv of the training behind an --eval-only / --pretrained model, from which the
    evaluation draws the KL during training: the one kept with a release (its manifest entry's
    `log`), or that of the run folder holding the checkpoint. None when there is none."""
    if not cfg.get("checkpoint"):
        return None
    path = checkpoint_path(cfg["checkpoint"])
    if cfg.get("pretrained"):
        weights_dir = cfg.get("weights_dir") or WEIGHTS_DIR
        kept = [e.get("log") for e in read_manifest(weights_dir) if e["file"] == os.path.basename(path)]
        log = os.path.join(weights_dir, kept[0]) if kept and kept[0] else None
    else:  # a run folder's (its config.json with it), not some other log.csv beside a file
        folder = run_dir_of(path)
        log = os.path.join(folder, "log.csv") if os.path.isfile(os.path.join(folder, "config.json")) else None
    return log if log and os.path.isfile(log) else None


def validate_run_flags(cfg, finite_keys):
    """One ValueError sentence for the first bad value of a flag every script has, before
    anything is written (including the flags only evaluation and figures use)."""
    check_finite_flags(cfg, ("lr", "epochs", "time_budget", "traversal_range") + tuple(finite_keys))
    for key in ("seed", "iterations", "batch_size", "log_every", "save_every", "eval_batch_size", "metric_votes",
                "eval_samples", "eval_every", "stop_at"):
        value = cfg.get(key)
        if value is not None and abs(value) > 2 ** 62:
            raise ValueError(f"--{key.replace('_', '-')} {value}: too large; give a number below 2^62.")
    first_error(
        (cfg.get("time_budget") is not None and cfg["time_budget"] <= 0,
         f"--time-budget {cfg.get('time_budget')}: give the minutes a slice may run (> 0)."),
        (cfg["seed"] < 0, f"--seed {cfg['seed']}: seeds are integers >= 0."),
        (not 0 < cfg["lr"] < 1e3, f"--lr {cfg['lr']:g}: the learning rate must be > 0 and below 1000."),
        (cfg["batch_size"] < 1, f"--batch-size {cfg['batch_size']}: need at least 1 image per update."),
        (cfg.get("iterations") is not None and cfg["iterations"] < 0, "--iterations must be >= 0."),
        (cfg.get("epochs") is not None and cfg["epochs"] < 0, "--epochs must be >= 0."),
        (cfg["log_every"] < 1 or cfg["save_every"] < 1, "--log-every and --save-every must be >= 1."),
        (cfg["eval_samples"] is not None and cfg["eval_samples"] < 1, "--eval-samples must be >= 1."),
        (cfg.get("eval_every", 0) < 0, f"--eval-every {cfg.get('eval_every')}: give the updates between evaluations "
                                       "(>= 1), or 0 for none."),
        (cfg.get("stop_at") is not None and cfg["stop_at"] < 1,
         f"--stop-at {cfg.get('stop_at')}: give the update after which to stop (>= 1)."),
        (cfg["eval_batch_size"] < 1, f"--eval-batch-size {cfg['eval_batch_size']}: need at least 1 image per batch."),
        (cfg["metric_votes"] < 1, f"--metric-votes {cfg['metric_votes']}: the FactorVAE score needs at least 1 vote."),
        (cfg.get("traversal_range") is not None and not 0 < cfg["traversal_range"] <= 100,
         f"--traversal-range {cfg.get('traversal_range')}: give a half-width R with 0 < R <= 100."),
        (cfg["eval_only"] and not cfg.get("checkpoint"),
         "--eval-only needs --checkpoint PATH (a checkpoint of this script or its run folder)."),
    )


def first_error(*checks):
    """Raise ValueError(message) for the first (bad, message) pair whose `bad` is true."""
    for bad, message in checks:
        if bad:
            raise ValueError(message)


def check_finite_flags(cfg, keys):
    """Reject NaN / infinite values of float flags before anything runs."""
    for k in keys:
        v = cfg.get(k)
        vals = v if isinstance(v, (list, tuple)) else [v]
        if any(isinstance(x, float) and not math.isfinite(x) for x in vals):
            raise ValueError(f"--{k.replace('_', '-')} {v}: every value must be a finite number.")


def num_iterations(cfg, n_train):
    """The run's length in updates: --iterations, else epochs * floor(N / B) (the partial
    last batch of an epoch is dropped, see data.batches)."""
    if cfg["batch_size"] > n_train:
        raise ValueError(f"--batch-size {cfg['batch_size']} exceeds the {n_train} training images.")
    if cfg.get("iterations") is not None:
        return int(cfg["iterations"])
    return int(round(cfg["epochs"] * (n_train // cfg["batch_size"])))


def format_config(cfg):
    """The merged config as an aligned block, one key per line."""
    width = max(len(k) for k in cfg)
    return "\n".join(f"  {k:<{width}}  {json.dumps(v) if not isinstance(v, str) else v}" for k, v in cfg.items())


# ---------------------------------------------------------------------------
# Run folders: checked before anything is written, locked while in use
# ---------------------------------------------------------------------------

def check_out_dir(out, new_run, overwrite=False):
    """Before anything is written: the folder can be used, and a new run never lands on an
    old one unless --overwrite (which deletes it later, in open_run_folder)."""
    probe = os.path.abspath(out)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if os.path.exists(probe) and not os.path.isdir(probe):
        where = "is a file" if probe == os.path.abspath(out) else f"is inside {probe}, which is a file"
        raise RunError(f"--out {out} {where}; choose a folder path.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunError(f"--out {out}: {probe} is not writable; choose a folder you can write to.")
    holder = lock_holder(out)
    if holder:
        raise RunError(f"{out} is in use by {holder}; wait for it to finish (or stop it) before starting another "
                       "run, resume or overwrite there.")
    found = [f for f in RUN_FILES if os.path.exists(os.path.join(out, f))] if new_run else []
    if found and not overwrite:
        raise RunError(f"{out} already holds a run ({', '.join(found)}); continue it with --resume {out}, "
                       "or start afresh there with --overwrite (which deletes that run).")


def lock_holder(out):
    """'process PID on HOST' if a live process holds out/.lock, else None (a lock of a
    dead process on this host does not count)."""
    try:
        with open(os.path.join(out, ".lock")) as f:
            info = json.load(f)
        pid, host = int(info["pid"]), str(info["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if pid == os.getpid() and host == socket.gethostname():
        return None
    if host == socket.gethostname():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None  # stale: its process is gone
        except PermissionError:
            pass
    return f"process {pid} on {host}"


_HELD_LOCKS = set()


def acquire_lock(out):
    """Take out/.lock for this process (O_EXCL, as git's index.lock), taking over a lock
    whose process is dead; released at exit."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, ".lock")
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = lock_holder(out)
            if holder:
                raise RunError(f"{out} is in use by {holder}; wait for it to finish (or stop it) first.") from None
            with contextlib.suppress(OSError):
                os.remove(path)  # stale, or our own
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(dict(pid=os.getpid(), host=socket.gethostname(), started=time.time())))
        _HELD_LOCKS.add(os.path.abspath(path))
        return path
    raise RunError(f"could not lock {out}; another process keeps taking it — try again.")


def release_locks():
    for path in list(_HELD_LOCKS):
        with contextlib.suppress(OSError):
            os.remove(path)
        _HELD_LOCKS.discard(path)


def open_run_folder(cfg):
    """Once the run is known to start (data loaded, model and optimiser built): lock the
    folder, and with --overwrite delete the old run's files (those it listed, by name)."""
    out = cfg["out"]
    acquire_lock(out)
    if cfg.get("overwrite") and not cfg.get("resume"):
        for name in _listed_eval_files(out) + list(OLD_RUN_FILES):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(out, name))


def save_config(cfg, **derived):
    """The run's config with the values training derives (length, objective, data size),
    written atomically to OUT/config.json; returns it."""
    cfg = dict(cfg, **derived)
    write_json(os.path.join(cfg["out"], "config.json"), cfg)
    return cfg


# ---------------------------------------------------------------------------
# Resume
# ---------------------------------------------------------------------------

def restore(cfg, model, optimizer, method, total, scaler=None):
    """Load a --resume checkpoint into model and optimiser (a changed --lr applied), restore
    every RNG and drop the log rows after its step. Deletes nothing else: an older
    evaluation stays until a new one replaces it. Returns (step, log window)."""
    path, out = cfg["resume"], cfg["out"]
    ckpt = load_checkpoint(path, method)
    load_state_dict(model, ckpt["model"], path)
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        if scaler is not None and scaler.is_enabled() and "scaler" in ckpt:
            scaler.load_state_dict(ckpt["scaler"])
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError):
        raise RunError(f"{path} has a bad field optimizer, rng or scaler; the checkpoint is damaged — use another "
                       "one.") \
            from None
    for group in optimizer.param_groups:
        group["lr"] = cfg["lr"]
    step = int(ckpt["step"])
    truncate_log(os.path.join(out, "log.csv"), step)
    truncate_log(os.path.join(out, "evals.csv"), step)
    changes = cfg.get("resume_changes") or {}
    print(f"resumed {out} at step {step}" + "".join(f"; {k}: {o!r} -> {n!r}" for k, (o, n) in changes.items()))
    if step > total:
        raise RunError(f"{path} is at step {step}, past the {total} updates asked for; "
                       "pass a larger --iterations, or evaluate it with --eval-only.")
    return step, ckpt.get("log_window")


def truncate_log(log_path, step):
    """Drop log.csv / evals.csv rows written after the checkpoint we resume from (they will
    be redone)."""
    if not os.path.exists(log_path):
        return
    with open(log_path, newline="") as f:
        rows = list(csv.reader(f))
    keep = rows[:1] + [r for r in rows[1:] if r and _row_step(r) <= step]
    buf = io.StringIO()
    csv.writer(buf).writerows(keep)
    _atomic_write(log_path, lambda f: f.write(buf.getvalue()))


def _row_step(row):
    """The step of a log row; a '# resumed at step N with ...' note belongs to step N."""
    first = row[0]
    if first.startswith("#"):
        words = first.split()
        return int(words[words.index("step") + 1]) if "step" in words else 0
    return int(float(first))


def read_log_rows(path):
    """log.csv as a list of dicts, the '#' note rows left out."""
    with open(path, newline="") as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


# ---------------------------------------------------------------------------
# The training log: one call per update
# ---------------------------------------------------------------------------

class TrainLog:
    """Everything around an update, in one call per update (`update`): log.csv rows (device
    sums, read once per --log-every), the progress bar, checkpoints every --save-every, the
    stop at --time-budget or on a stop signal, and the NaN guard.

    Three kinds of logged values: `mean` 0-dim or 1-D tensors averaged over the rows'
    window on the device (a 1-D `kl_z` fills columns kl_z0, kl_z1, ...); `host` Python
    numbers averaged on the host; `now` values written as they are at the logged step.

    A checkpoint is held back one update: it is written only once the next update's loss is
    known to be finite (or at the end), so a NaN or infinite loss leaves the checkpoint of a
    step whose parameters were still good."""

    def __init__(self, cfg, columns, step, total, device, method, window=None, argv=(), nan_hint="check the data",
                 scaler=None):
        self.cfg, self.columns, self.total, self.method, self.argv = cfg, columns, total, method, argv
        self.scaler = scaler
        self.nan_hint, self.device = nan_hint, device
        self.ckpt_path = os.path.join(cfg["out"], "checkpoint.pt")
        self.file, self.writer = _open_log(cfg["out"], columns, step, cfg.get("resume_changes"))
        self.bar = progress(total, step, cfg["no_progress"])
        self.budget = TimeBudget(cfg["time_budget"])
        window = window or {}
        self.sums = None if window.get("sums") is None else window["sums"].to(device)
        self.n = int(window.get("n", 0))
        # Host sums in the columns' units; checkpoints from before "host_sums" kept one sum in
        # seconds (cascadevae.py's solve time, logged in ms).
        legacy = window.get("host", window.get("solve_sum"))
        self.host = list(window.get("host_sums", [1000.0 * float(legacy)] if legacy is not None else []))
        self.seconds_before, self.t_last = float(window.get("seconds", 0.0)), time.perf_counter()
        self.finite = torch.ones((), dtype=torch.bool, device=device)  # every loss since the start finite
        self.t_start, self.start_step, self.step, self.stopped = time.perf_counter(), step, step, False
        self.pending, self.good_step = None, None
        self.stop_at, self.eval_every = cfg.get("stop_at"), cfg.get("eval_every") or 0
        if self.stop_at is not None and self.stop_at <= step:
            raise RunError(f"--stop-at {self.stop_at}: the run is already at update {step}; give a later update.")
        self.evals_path = os.path.join(cfg["out"], "evals.csv")
        self.evaluated = {int(float(r["step"])) for r in read_log_rows(self.evals_path)} \
            if os.path.exists(self.evals_path) else set()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.budget.close()
        self.bar.close()
        self.file.close()
        if exc_type is FloatingPointError:
            raise FloatingPointError(self._nan_message()) from None
        return False

    def update(self, step, model, optimizer, mean, host=None, now=None):
        """After update `step`: accumulate, write a row when due, checkpoint when due; True
        when the loop must stop (time budget or stop signal)."""
        row = torch.cat([v.detach().reshape(-1) for v in mean.values()])   # (columns,) on the device
        self.sums = row if self.sums is None else self.sums + row
        self.n += 1
        if host:
            self.host += [0.0] * (len(host) - len(self.host))
            self.host = [h + float(v) for h, v in zip(self.host, host.values())]
        self.finite &= torch.isfinite(mean["loss"].detach())
        self.step = step
        if self.pending is not None:          # the held-back checkpoint: written once this loss is finite
            self._check_finite(step)
            self._write_pending()
        if step % self.cfg["log_every"] == 0 or step == self.total:
            self._write_row(step, mean, host, now or {})
        self.bar.update(1)
        self.stopped = step < self.total and (self.budget.expired() or step == self.stop_at)
        if step % self.cfg["save_every"] == 0 or step == self.total or self.stopped:
            self._check_finite(step)
            self.pending = checkpoint_state(model, optimizer, step, self.cfg, self.method, self._window(), self.scaler)
            if step == self.total or self.stopped:
                if not all_finite(model, optimizer):
                    raise FloatingPointError(step)
                self._write_pending()
        return self.stopped

    def next_stop(self, step):
        """Where the next training slice ends: the next multiple of --eval-every, or the end."""
        if not self.eval_every:
            return self.total
        return min(self.total, (step // self.eval_every + 1) * self.eval_every)

    def eval_due(self, step):
        """Whether --eval-every asks for an evaluation at `step` that evals.csv lacks (a resumed
        run catches up on the one its pause skipped)."""
        return (bool(self.eval_every) and step > 0 and step % self.eval_every == 0
                and not self.stopped and step not in self.evaluated)

    def record_eval(self, step, res):
        """Append the scalar metrics of an in-run evaluation to evals.csv (one row per
        evaluated update) and keep its time (res["eval_seconds"]) out of the training rows'
        throughput."""
        seconds = float(res.get("eval_seconds") or 0.0)
        values = {k: v for k, v in res.items()
                  if k != "step" and (v is None or isinstance(v, (bool, int, float)))}
        header = None
        if os.path.exists(self.evals_path):
            with open(self.evals_path, newline="") as f:
                header = next(csv.reader(f), None)           # None: an empty file (a crash before its header)
        columns = header[1:] if header else sorted(values)
        with open(self.evals_path, "a", newline="") as f:
            writer = csv.writer(f)
            if f.tell() == 0:
                writer.writerow(["step", *columns])
            writer.writerow([step] + ["" if values.get(c) is None else f"{values[c]:.6g}" for c in columns])
        self.evaluated.add(step)
        self.t_last += seconds
        self.t_start += seconds
        shown = [f"{k} {values[k]:.4g}" for k in EVAL_SHOWN if values.get(k) is not None]
        print(f"evaluation at update {step} ({seconds:.0f} s): " + (", ".join(shown) or "see evals.csv"), flush=True)

    def _check_finite(self, step):
        if not bool(self.finite):
            raise FloatingPointError(step)

    def _write_pending(self):
        save_checkpoint(self.ckpt_path, self.pending)
        self.good_step, self.pending = self.pending["step"], None

    def _window(self):
        return dict(sums=None if self.sums is None else self.sums.cpu(), n=self.n, host_sums=list(self.host),
                    seconds=self.seconds_before + time.perf_counter() - self.t_last)

    def _write_row(self, step, mean, host, now):
        self._check_finite(step)
        t = time.perf_counter()
        seconds = self.seconds_before + t - self.t_last
        sums = (self.sums / self.n).tolist()
        values, i = {}, 0
        for name, v in mean.items():
            if v.dim() == 0:
                values[name], i = sums[i], i + 1
            else:
                for j in range(v.numel()):
                    values[f"{name}{j}"] = sums[i + j]
                i += v.numel()
        values.update({k: h / self.n for k, h in zip(host or {}, self.host)})
        values.update(now)
        self.writer.writerow([step] + [f"{values[c]:.6g}" for c in self.columns]
                             + [f"{seconds:.3f}", f"{self.n * self.cfg['batch_size'] / seconds:.1f}"])
        self.file.flush()
        self.bar.set_postfix(**{k: f"{values[k]:.2f}" for k in list(mean)[:4] if k in values}, refresh=False)
        if self.start_step is not None:       # once, after the first log interval
            print(eta_line(step, self.total, (t - self.t_start) / max(step - self.start_step, 1)))
            self.start_step = None
        self.sums, self.n, self.host, self.seconds_before, self.t_last = None, 0, [0.0] * len(self.host), 0.0, t

    def _nan_message(self):
        if self.good_step is not None or os.path.exists(self.ckpt_path):
            kept = f"the checkpoint of step {self.good_step or _stored_step(self.ckpt_path)} is kept in {self.ckpt_path}"
        else:
            kept = f"no checkpoint was saved yet (the first is due at step {self.cfg['save_every']})"
        return f"the loss became NaN or infinite by step {self.step}; {kept} — {self.nan_hint}."

    def finish(self):
        """Print how to continue a paused run; True when training is finished."""
        if self.stopped:
            print(paused_message(self.cfg, self.step, self.total, self.method + ".py", self.argv, self.budget),
                  flush=True)
        return not self.stopped


def _stored_step(path):
    with contextlib.suppress(Exception):
        return int(torch.load(path, map_location="cpu", weights_only=True)["step"])
    return "?"


def _open_log(out, columns, step, changes=None):
    """log.csv for appending (a new run or step 0: a fresh file with its header); a resume
    whose flags changed records them in a comment row."""
    log_path = os.path.join(out, "log.csv")
    new_log = not os.path.exists(log_path) or step == 0
    log_file = open(log_path, "w" if new_log else "a", newline="")
    writer = csv.writer(log_file)
    if new_log:
        writer.writerow(["step", *columns, "seconds", "img_per_s"])
    if changes:
        writer.writerow([f"# resumed at step {step} with " + "; ".join(
            f"{k}: {o!r} -> {n!r}" for k, (o, n) in changes.items())])
    return log_file, writer


def paused_message(cfg, step, total, prog, argv, budget=None):
    why = (f"{budget.signalled} received" if budget is not None and budget.signalled
           else f"--stop-at {step} reached" if step == cfg.get("stop_at")
           else f"time budget of {cfg['time_budget']:g} min reached")
    return (f"{why} at step {step} of {total}; checkpoint saved in {cfg['out']}. "
            f"Continue with: {resume_command(prog, argv, cfg['out'])}")


def resume_command(prog, argv, out):
    """The command that continues this run: the same flags with --resume OUT."""
    keep, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--resume", "--out"):
            skip = True
            continue
        if a.startswith(("--resume=", "--out=")) or a in ("--overwrite", "--force-resume"):
            continue
        keep.append(a)
    return " ".join(["python", prog] + [shlex.quote(a) for a in keep] + ["--resume", shlex.quote(out)])


# ---------------------------------------------------------------------------
# Time budget, stop signals and progress
# ---------------------------------------------------------------------------

# Signals that ask a run to stop with a checkpoint: `kill` (SIGTERM), and the pre-emption /
# time-limit warnings of SLURM and submitit (SIGUSR1/2).
STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGUSR1", "SIGUSR2") if hasattr(signal, n))


class TimeBudget:
    """`--time-budget MINUTES`, or a stop signal: the loop asks `expired()` after each
    update (no sync) and, once it says yes, saves a checkpoint and exits with status 0."""

    def __init__(self, minutes):
        self.seconds = None if minutes is None else 60.0 * float(minutes)
        self.start = time.monotonic()
        self.signalled, self._previous = None, {}
        if threading.current_thread() is threading.main_thread():  # signal handlers live there only
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._on_signal)

    def close(self):
        """Give the signals back to whoever handled them before (a caller of main())."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _on_signal(self, signum, frame):
        self.signalled = signal.Signals(signum).name

    def expired(self):
        return self.signalled is not None or (
            self.seconds is not None and time.monotonic() - self.start >= self.seconds)


def eta_line(step, total, seconds_per_update):
    left = max(total - step, 0) * seconds_per_update
    return (f"{total} updates in all; {seconds_per_update * 1000:.1f} ms per update so far: "
            f"about {_fmt_duration(left)} left for the remaining {total - step}")


def _fmt_duration(seconds):
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def progress(total, initial, disable):
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is in requirements.txt; degrade quietly if absent
        disable = True
    if disable:
        class _Null:
            def update(self, n): pass
            def set_postfix(self, **kw): pass
            def close(self): pass
        return _Null()
    return tqdm(total=total, initial=initial, unit="it", dynamic_ncols=True, smoothing=0.05)


# ---------------------------------------------------------------------------
# Evaluation folders: staged, then published by name
# ---------------------------------------------------------------------------

def check_eval_folder(cfg, method):
    """Before an --eval-only / --pretrained evaluation writes anything: its folder holds
    nothing, an earlier evaluation of a `method` model, or a run of the same script."""
    out = cfg["out"]
    check_out_dir(out, new_run=False)
    if not os.path.isdir(out) or not os.listdir(out):
        return
    for name in ("eval_config.json", "config.json"):
        path = os.path.join(out, name)
        if os.path.isfile(path):
            with contextlib.suppress(RunError):
                other = read_json(path)
                if isinstance(other, dict) and other.get("method", _method_from_config(other)) == method:
                    return
    raise RunError(f"--out {out} holds files that are not an evaluation or run of {method}.py; "
                   "an evaluation writes into an empty folder or one of its own — choose another --out.")


@contextlib.contextmanager
def staged_evaluation(cfg, method, eval_config=None):
    """Yield a staging folder for an evaluation's files; on success replace the previous
    evaluation's files (by the names its eval_files.json lists) with the new ones and list
    those. A stop signal during evaluation ends in one sentence; on any failure only the
    staging folder is removed and the run folder is as it was."""
    out = cfg["out"]
    acquire_lock(out)
    stage = os.path.join(out, f".eval-{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    os.makedirs(stage)
    signalled = []

    def on_signal(signum, frame):
        signalled.append(signal.Signals(signum).name)
        raise Stopped(signal.Signals(signum).name)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    try:
        yield stage
        if eval_config is not None:
            write_json(os.path.join(stage, "eval_config.json"), eval_config)
        _publish(stage, out)
    except Stopped as err:
        raise RunError(f"{err} received during evaluation; {out} keeps its previous evaluation files — "
                       "run the same command again to evaluate.") from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(stage, ignore_errors=True)


def _listed_eval_files(out):
    path = os.path.join(out, "eval_files.json")
    if not os.path.isfile(path):
        return []
    with contextlib.suppress(RunError):
        listed = read_json(path)
        return [n for n in listed.get("files", []) if isinstance(n, str) and os.path.basename(n) == n
                and not n.startswith(".")] if isinstance(listed, dict) else []
    return []


def _publish(stage, out):
    new = sorted(os.listdir(stage))
    for name in _listed_eval_files(out):
        if name not in new:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(out, name))
    for name in new:
        os.replace(os.path.join(stage, name), os.path.join(out, name))
    write_json(os.path.join(out, "eval_files.json"), dict(files=new + ["eval_files.json"]))


def print_summary(res, out=None, skip=("null_reasons",)):
    """The scalar results of an evaluation, and where they are, as the last thing a run prints."""
    print(json.dumps({k: v for k, v in res.items() if k not in skip and not isinstance(v, (list, dict))}, indent=1))
    if out is not None:
        listed = _listed_eval_files(out)
        print(f"results in {out}/: " + ", ".join(n for n in listed if n != "eval_files.json"))
