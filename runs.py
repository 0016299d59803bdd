"""Run folders: config merging, seeding, checkpoints with RNG state, exact resume, time budgets.

Plumbing shared by jointvae.py, btcvae.py and cascadevae.py that touches no equation of
the papers: the config (DEFAULTS <- PRESETS <- flags, make_config), the flags every script
has and --help's preset values, the steps around each script's training loop
(prepare_training, TrainLog) and its --eval-only loading (load_for_eval, run). A run
folder holds config.json, log.csv, checkpoint.pt (model, optimiser, step, config, every
RNG state and the unfinished log window), metrics.json and figures.

The rules a user can rely on:
  * the folder you name is the folder that is written: `--resume DIR` reads and writes
    DIR, never the folder stored in the checkpoint;
  * a new run never lands in a folder that holds a run, unless `--overwrite` (which
    first removes the old run's files, so nothing stale stays beside the new one);
  * on `--resume`, flags that only change how the run goes on are applied, a new
    learning rate is applied and recorded, and a flag that changes the model, the data or
    the objective is refused (or, with `--force-resume`, applied and recorded);
  * every write of a checkpoint, config or log rewrite is atomic (temp file +
    os.replace): a crash or a full disk leaves the previous file intact.
"""

import argparse
import csv
import io
import json
import math
import os
import random
import shlex
import signal
import sys
import threading
import time

import numpy as np
import torch

import metrics
import nets

# Files that make a folder "a run": a new run refuses to start beside them.
RUN_FILES = ("checkpoint.pt", "log.csv", "metrics.json", "config.json")
# Files a run writes that --overwrite removes with them (figures are *.png).
STALE_FILES = RUN_FILES + ("checkpoint.pt.tmp", "stdout.log", "reproduce.json", "eval_config.json")

# Flags that change only how a resumed run goes on (length, logging, hardware, evaluation):
# applied on --resume. Every other key changes the model, the data or the objective.
CONTINUE_KEYS = frozenset({
    "iterations", "epochs", "log_every", "save_every", "no_progress", "device", "eval_samples",
    "eval_batch_size", "metric_votes", "no_eval", "time_budget", "data_dir", "download",
    "eval_split", "out", "resume", "checkpoint", "overwrite", "force_resume", "eval_only",
    "decomp_samples", "pretrained", "weights_dir", "traversal_range",
})


# Flags that hold for one invocation only: a resume does not inherit them from the run.
PER_INVOCATION = frozenset({"time_budget", "overwrite", "force_resume", "resume", "checkpoint", "eval_only",
                            "pretrained", "weights_dir"})

# The defaults of the flags add_run_flags defines (a script's DEFAULTS add its own, and
# save_every, whose default depends on the run's length).
RUN_DEFAULTS = dict(
    data_dir="data", download=True, train_split=None, eval_split=None, seed=0, device="auto", out=None,
    log_every=100, eval_samples=None, eval_batch_size=512, metric_votes=800, eval_only=False, checkpoint=None,
    resume=None, no_eval=False, no_progress=False, time_budget=None, overwrite=False, force_resume=False,
    pretrained=False, weights_dir=None,
)


class RunError(RuntimeError):
    """A problem with a run folder or checkpoint, said in one sentence."""


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


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------

def checkpoint_path(path):
    return os.path.join(path, "checkpoint.pt") if os.path.isdir(path) else path


def run_dir_of(path):
    """The run folder of a `--resume` argument: the folder itself, or a checkpoint's folder."""
    return path if os.path.isdir(path) else (os.path.dirname(path) or ".")


def load_checkpoint(path, method=None):
    """torch.load(weights_only=True) of a checkpoint file; with `method`, check it is one of
    that script's training checkpoints. Raises one-sentence FileNotFoundError / RunError."""
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
        raise RunError(f"{path} was written by {stored}.py, not {method}.py; "
                       f"use python {stored}.py with it.")


def _method_from_config(cfg):
    """Checkpoints written before the `method` key: tell the scripts apart by their keys."""
    if not isinstance(cfg, dict):
        return None
    if "c_cont" in cfg:
        return "jointvae"
    if "beta_h" in cfg:
        return "cascadevae"
    if "estimator" in cfg:
        return "btcvae"
    return None


def save_checkpoint(path, model, optimizer, step, cfg, method, log_window=None):
    """Atomic write: a crash or a full disk mid-save leaves the previous checkpoint intact
    and no .tmp behind."""
    state = dict(model=model.state_dict(), optimizer=optimizer.state_dict(), step=int(step),
                 config=cfg, rng=rng_state(), method=method, log_window=log_window)
    _atomic_write(path, lambda f: torch.save(state, f), binary=True)


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
# Atomic files
# ---------------------------------------------------------------------------

def _atomic_write(path, write, binary=False):
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb" if binary else "w", newline=None if binary else "") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise RunError(f"could not write {path} ({err.strerror or err}); the previous file is kept — "
                       "free some disk space or choose another --out.") from None


def write_json(path, obj):
    _atomic_write(path, lambda f: json.dump(obj, f, indent=2))


def truncate_log(log_path, step):
    """Drop log rows written after the checkpoint we resume from (they will be redone)."""
    if not os.path.exists(log_path):
        return
    with open(log_path, newline="") as f:
        rows = list(csv.reader(f))
    keep = rows[:1] + [r for r in rows[1:] if r and _row_step(r) <= step]
    buf = io.StringIO()
    csv.writer(buf).writerows(keep)
    _atomic_write(log_path, lambda f: f.write(buf.getvalue()))


# ---------------------------------------------------------------------------
# Released weights: results/weights/<method>-<dataset>-s<seed>.pt and manifest.json
# ---------------------------------------------------------------------------

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "weights")


def use_pretrained(cfg, method, variant=None):
    """--pretrained: evaluate the released weights of (dataset, seed) like --eval-only --checkpoint."""
    if cfg.get("pretrained"):
        cfg["checkpoint"] = pretrained_path(variant or method, cfg["dataset"], cfg["seed"],
                                            cfg.get("weights_dir") or WEIGHTS_DIR)
        cfg["eval_only"] = True
        if cfg.get("out") is None:
            cfg["out"] = os.path.join("runs", f"{method}-{cfg['dataset']}-pretrained-s{cfg['seed']}")


def weights_name(method, dataset, seed):
    """`method` is the script, or a named variant of it (btcvae.py --beta-vae: "betavae")."""
    return f"{method}-{dataset}-s{seed}.pt"


def read_manifest(weights_dir=WEIGHTS_DIR):
    path = os.path.join(weights_dir, "manifest.json")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return json.load(f)["weights"]


def pretrained_path(name, dataset, seed, weights_dir=WEIGHTS_DIR):
    """The released weights of (name, dataset, seed), or one sentence naming those that exist."""
    path = os.path.join(weights_dir, weights_name(name, dataset, seed))
    if os.path.isfile(path):
        return path
    have = [f"--dataset {e['dataset']} --seed {e['seed']}" for e in read_manifest(weights_dir) if e["name"] == name]
    method = name
    raise FileNotFoundError(f"no released {method}.py weights for --dataset {dataset} --seed {seed} in {weights_dir}; "
                            + (f"released: {', '.join(have)}." if have else "none are released yet."))


def release(run_dir, method, weights_dir=WEIGHTS_DIR, name=None, **provenance):
    """Write a finished run's model as float16 weights (with the config that rebuilds it)
    and record it in manifest.json with the metrics its run measured, on which split, and
    `provenance` (protocol, command, wall time, device)."""
    ckpt = load_checkpoint(checkpoint_path(run_dir), method)
    metrics_path = os.path.join(run_dir, "metrics.json")
    if not os.path.isfile(metrics_path):
        raise RunError(f"{run_dir} has no metrics.json: only finished, evaluated runs are released.")
    with open(metrics_path) as f:
        res = json.load(f)
    cfg = ckpt["config"]
    label = name or method
    name = weights_name(label, cfg["dataset"], cfg["seed"])
    os.makedirs(weights_dir, exist_ok=True)
    # float16 halves the files; a test checks that the metrics survive the rounding.
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in ckpt["model"].items()}
    keep = {k: v for k, v in cfg.items() if k not in ("resume", "resume_changes", "out", "checkpoint", "data_dir")}
    _atomic_write(os.path.join(weights_dir, name),
                  lambda f: torch.save(dict(model=state, config=keep, step=ckpt["step"], method=method), f),
                  binary=True)
    scalar = {k: v for k, v in res.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    entry = dict(file=name, name=label, method=method, dataset=cfg["dataset"], seed=cfg["seed"],
                 updates=int(ckpt["step"]), train_split=cfg.get("train_split"), eval_split=res.get("eval_split"),
                 n_eval=res.get("n_eval"), metrics=scalar, **provenance)
    entries = [e for e in read_manifest(weights_dir) if e["file"] != name] + [entry]
    entries.sort(key=lambda e: (e["method"], e["dataset"], e["seed"]))
    write_json(os.path.join(weights_dir, "manifest.json"), dict(
        note="Released float16 weights of finished runs; metrics as measured by the run's own evaluation "
             "(float32) on eval_split. Evaluate one with: python <method>.py --dataset D --seed S --pretrained.",
        weights=entries))
    return os.path.join(weights_dir, name), entry


# ---------------------------------------------------------------------------
# Run folders and configs
# ---------------------------------------------------------------------------

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


def prepare_training(cfg, load_dataset):
    """What comes before a training run's model: its folder checked (a new run never
    overwrites one), the training split loaded, the batch size checked against it and
    every RNG seeded. -> (data set, the run's length in updates)."""
    check_out_dir(cfg["out"], new_run=not cfg["resume"], overwrite=cfg["overwrite"])
    ds = load_dataset(cfg, cfg["train_split"])
    check_batch_size(cfg, len(ds))
    seed_everything(cfg["seed"])
    return ds, num_iterations(cfg, len(ds))


def num_iterations(cfg, n_train):
    """The run's length in updates: --iterations, else epochs * floor(N / B) (the partial
    last batch of an epoch is dropped, see data.batches)."""
    if cfg.get("iterations") is not None:
        return int(cfg["iterations"])
    return int(round(cfg["epochs"] * (n_train // cfg["batch_size"])))


def check_batch_size(cfg, n_train):
    if cfg["batch_size"] > n_train:
        raise ValueError(f"--batch-size {cfg['batch_size']} exceeds the {n_train} training images.")


def save_config(cfg, **derived):
    """The run's config with the values training derives (length, objective, data size),
    written atomically to OUT/config.json; returns it."""
    cfg = dict(cfg, **derived)
    os.makedirs(cfg["out"], exist_ok=True)
    write_json(os.path.join(cfg["out"], "config.json"), cfg)
    return cfg


def check_out_dir(out, new_run, overwrite=False, evaluation=False):
    """Before anything is written: the folder can be used, and a new run never lands on an
    old one (unless --overwrite, which removes the old run's files first)."""
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
    if not new_run or not os.path.isdir(out):
        return
    # An evaluation may replace an older evaluation (metrics, figures), never a training run.
    guarded = ("checkpoint.pt", "log.csv", "config.json") if evaluation else RUN_FILES
    found = [f for f in guarded if os.path.exists(os.path.join(out, f))]
    if found and not overwrite:
        raise RunError(f"{out} already holds a run ({', '.join(found)}); continue it with --resume {out}, "
                       "or start afresh there with --overwrite (which deletes that run).")
    if found or overwrite or evaluation:
        for name in os.listdir(out):
            if name in STALE_FILES or name.endswith(".png"):
                os.remove(os.path.join(out, name))


def merge_resume(stored, explicit, normalize, force=False, log=print):
    """The config of a resumed run: the stored config, with the explicit flags that only
    change how the run goes on applied. `normalize(cfg)` brings a config to canonical form
    (the same function that builds a new run's config). Returns (cfg, changes): changes maps
    each applied key that changes the model, data or objective (only with force) and `lr`
    to (old, new)."""
    cfg = {k: v for k, v in stored.items() if k not in PER_INVOCATION}
    cfg.update(explicit)
    normalize(cfg)
    base = dict(stored)
    normalize(base)
    changed = {k: (base.get(k), cfg[k]) for k in cfg
               if k not in CONTINUE_KEYS and k in explicit and _differs(base.get(k), cfg[k])}
    lr_change = changed.pop("lr", None)
    if changed and not force:
        listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in sorted(changed.items()))
        raise RunError(f"--resume would change what the run trains ({listed}); resume with the run's own "
                       "settings, start a new run in another --out, or pass --force-resume to apply the changes.")
    if changed:
        log("force-resume: applying " + "; ".join(f"{k}: {o!r} -> {n!r}" for k, (o, n) in sorted(changed.items())))
    if lr_change:
        changed["lr"] = lr_change
    return cfg, changed


def _differs(a, b):
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) != len(b) or any(_differs(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) != float(b)
    return a != b


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


def format_config(cfg):
    """The merged config as an aligned block, one key per line."""
    width = max(len(k) for k in cfg)
    return "\n".join(f"  {k:<{width}}  {json.dumps(v) if not isinstance(v, str) else v}" for k, v in cfg.items())


def parser(prog, description):
    """A script's argument parser. Unset flags stay absent (SUPPRESS), so make_config knows
    which flags the user gave."""
    return argparse.ArgumentParser(prog=prog, description=description, argument_default=argparse.SUPPRESS)


def finish_parser(p, method, data_help, dataset, defaults, presets, source):
    """Add the flags every script has, and (for a known --dataset; the parser reports an
    unknown one) show each flag's preset value and `source(key)` in --help."""
    add_run_flags(p, method, data_help)
    if dataset in presets:
        show_defaults(p, defaults, presets[dataset], source)
    return p


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
    p.add_argument("--time-budget", type=float, metavar="MINUTES",
                   help="stop after MINUTES with a checkpoint; continue with the same command and --resume")


def dataset_of(argv, default):
    """The --dataset an argv asks for (before the full parser exists: its defaults depend on it)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--dataset")
    known, _ = pre.parse_known_args(argv)
    return known.dataset or default


def show_defaults(p, defaults, preset, source):
    """Append to every flag's help the value this --dataset would use and where it comes from:
    `source(key)` names the paper's table for preset keys; other defaults are the script's."""
    for action in p._actions:
        key = action.dest
        if key in ("help", "dataset") or key not in defaults or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            continue
        value = preset.get(key, defaults[key])
        if value is None:
            continue
        shown = " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) \
            if isinstance(value, (list, tuple)) else (f"{value:g}" if isinstance(value, float) else str(value))
        where = f", {source(key)}" if key in preset else ""
        action.help = (action.help + " " if action.help else "") + f"[default: {shown}{where}]"


def normalize(cfg, defaults, sources, method):
    """Fill what the flags leave open (in place): keys older runs lack, the splits of the
    data set, the run folder runs/<method>-<dataset>-s<seed>."""
    for key, value in defaults.items():
        cfg.setdefault(key, value)
    source = sources[cfg["dataset"]]
    cfg["train_split"] = cfg.get("train_split") or source["train_split"]
    cfg["eval_split"] = cfg.get("eval_split") or source["eval_split"]
    if cfg.get("out") is None:
        tag = "eval" if cfg["eval_only"] else f"s{cfg['seed']}"
        cfg["out"] = os.path.join("runs", f"{method}-{cfg['dataset']}-{tag}")
    return cfg


def validate_run_flags(cfg, finite_keys):
    """One ValueError sentence per bad value of a flag every script has (before anything runs)."""
    check_finite_flags(cfg, ("lr", "epochs", "time_budget") + tuple(finite_keys))
    checks = (
        (cfg.get("time_budget") is not None and cfg["time_budget"] <= 0,
         f"--time-budget {cfg.get('time_budget')}: give the minutes a slice may run (> 0)."),
        (cfg["seed"] < 0, f"--seed {cfg['seed']}: seeds are integers >= 0."),
        (cfg["lr"] <= 0 or cfg["batch_size"] < 1, "--lr must be > 0 and --batch-size >= 1."),
        (cfg.get("iterations") is not None and cfg["iterations"] < 0, "--iterations must be >= 0."),
        (cfg.get("epochs") is not None and cfg["epochs"] < 0, "--epochs must be >= 0."),
        (cfg["log_every"] < 1 or cfg["save_every"] < 1, "--log-every and --save-every must be >= 1."),
        (cfg["eval_samples"] is not None and cfg["eval_samples"] < 1, "--eval-samples must be >= 1."),
        (cfg["eval_only"] and not cfg.get("checkpoint"),
         "--eval-only needs --checkpoint PATH (a checkpoint of this script or its run folder)."),
    )
    first_error(*checks)


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


# ---------------------------------------------------------------------------
# The steps every script's make_config and train() share
# ---------------------------------------------------------------------------

def make_config(argv, method, build_parser, defaults, presets, normalize, validate, legacy=None,
                check_flags=None, variant=None):
    """A script's config: DEFAULTS <- PRESETS[dataset] <- the flags given; on --resume the
    run's own config <- the flags that only change how it goes on (merge_resume).
    check_flags(explicit) vets the given flags first; variant(cfg) names the released
    weights' variant for --pretrained; normalize and validate are the script's."""
    explicit = vars(build_parser(dataset_of(argv, defaults["dataset"])).parse_args(argv))
    if check_flags is not None:
        check_flags(explicit)
    if "resume" in explicit:
        cfg = resume_config(explicit, method, normalize, legacy)
    else:
        cfg = dict(defaults)
        cfg.update(presets[explicit.get("dataset", cfg["dataset"])])
        cfg.update(explicit)
        use_pretrained(cfg, method, variant(cfg) if variant is not None else None)
        normalize(cfg)
    validate(cfg)
    return cfg


def load_for_eval(cfg, method, keys, legacy=None):
    """--eval-only / --pretrained: the checkpoint of `method`, the `keys` that fix the model
    (and the objective it was trained with) copied from the run's config into cfg, and
    the evaluation folder opened. `legacy` fills keys older runs lack.
    Returns (checkpoint dict, its path, its step)."""
    path = checkpoint_path(cfg["checkpoint"])
    ckpt = load_checkpoint(path, method)
    stored = dict(legacy or {}, **ckpt["config"])
    for key in keys:
        cfg[key] = stored[key]
    open_eval_folder(cfg)
    return ckpt, path, int(ckpt["step"])


def resume_config(explicit, method, normalize, legacy=None):
    """The config of `--resume DIR`: the run's own config, the flags that only change how it
    goes on applied (see merge_resume), `out` = DIR. `legacy` fills keys that runs written
    before a flag existed lack, with the value those runs used."""
    resume_path = checkpoint_path(explicit["resume"])
    run_dir = run_dir_of(explicit["resume"])
    if "out" in explicit and os.path.abspath(explicit["out"]) != os.path.abspath(run_dir):
        raise RunError(f"--resume {explicit['resume']} continues in {run_dir}; --out {explicit['out']} "
                       "names another folder (copy the run folder there first to branch it).")
    ckpt = load_checkpoint(resume_path, method)
    if "rng" not in ckpt:
        raise RunError(f"{resume_path} holds no RNG state, so it cannot be resumed exactly; "
                       "evaluate it with --eval-only --checkpoint, or start a new run.")
    stored = dict(ckpt["config"])
    for key, value in (legacy or {}).items():
        stored.setdefault(key, value)
    stored.pop("resume_changes", None)
    cfg, changes = merge_resume(stored, explicit, normalize, force=explicit.get("force_resume", False))
    cfg["resume"], cfg["out"], cfg["resume_changes"] = resume_path, run_dir, changes
    return cfg


def restore(cfg, model, optimizer, method):
    """Load a --resume checkpoint into model and optimiser (a changed --lr applied), restore
    every RNG, drop the log rows after its step and the evaluation of an older step.
    Returns (step, log window)."""
    path, out = cfg["resume"], cfg["out"]
    ckpt = load_checkpoint(path, method)
    load_state_dict(model, ckpt["model"], path)
    optimizer.load_state_dict(ckpt["optimizer"])
    for group in optimizer.param_groups:
        group["lr"] = cfg["lr"]
    set_rng_state(ckpt["rng"])
    step = int(ckpt["step"])
    truncate_log(os.path.join(out, "log.csv"), step)
    for name in os.listdir(out):
        if name == "metrics.json" or name.endswith(".png"):
            os.remove(os.path.join(out, name))
    changes = cfg.get("resume_changes") or {}
    print(f"resumed {out} at step {step}" + "".join(f"; {k}: {o!r} -> {n!r}" for k, (o, n) in changes.items()))
    return step, ckpt.get("log_window")


def open_log(out, columns, step, changes=None):
    """log.csv for appending (a new run or step 0: a fresh file with its header); a resume
    whose flags changed records them in a comment row."""
    log_path = os.path.join(out, "log.csv")
    new_log = not os.path.exists(log_path) or step == 0
    log_file = open(log_path, "w" if new_log else "a", newline="")
    writer = csv.writer(log_file)
    if new_log:
        writer.writerow(columns)
    if changes:
        writer.writerow([f"# resumed at step {step} with " + "; ".join(
            f"{k}: {o!r} -> {n!r}" for k, (o, n) in changes.items())])
    return log_file, writer


class LogWindow:
    """Per-step values summed on the device since the last log row (no host sync per step).
    Its state goes into every checkpoint, so the row after a resume equals the
    uninterrupted run's row."""

    def __init__(self, device, state=None):
        state = state or {}
        self.sums = None if state.get("sums") is None else state["sums"].to(device)
        self.n = int(state.get("n", 0))
        self.host = float(state.get("solve_sum", state.get("host", 0.0)))  # host-side sums (seconds)
        self.seconds_before = float(state.get("seconds", 0.0))
        self.t_last = time.perf_counter()

    def add(self, row, host=0.0):
        self.sums = row if self.sums is None else self.sums + row
        self.n += 1
        self.host += host

    def read(self):
        """(mean row as a list, mean host value, seconds the window took) and reset."""
        now = time.perf_counter()
        values = (self.sums / self.n).tolist()
        out = values, self.host / self.n, self.seconds_before + now - self.t_last
        self.sums, self.n, self.host, self.seconds_before, self.t_last = None, 0, 0.0, 0.0, now
        return out

    def state(self):
        return dict(sums=None if self.sums is None else self.sums.cpu(), n=self.n, host=self.host,
                    seconds=self.seconds_before + time.perf_counter() - self.t_last)


class TrainLog:
    """The bookkeeping around a training loop, used as `with TrainLog(...) as log:`: log.csv
    rows from a LogWindow, the progress bar, the duration estimate, checkpoints every
    --save-every and at the end, the stop at --time-budget or on a stop signal (checkpoint
    first, then exit status 0), and a NaN or infinite loss turned into one sentence
    (`nan_hint` says what to change) without writing a checkpoint of the broken model."""

    def __init__(self, cfg, columns, step, total, device, window_state, method, argv=(), nan_hint="check the data"):
        self.cfg, self.total, self.method, self.argv, self.nan_hint = cfg, total, method, argv, nan_hint
        self.ckpt_path = os.path.join(cfg["out"], "checkpoint.pt")
        self.file, self.writer = open_log(cfg["out"], columns, step, cfg.get("resume_changes"))
        self.progress = progress(total, step, cfg["no_progress"])
        self.budget = TimeBudget(cfg["time_budget"])
        self.window = LogWindow(device, window_state)
        self.finite = torch.ones((), dtype=torch.bool, device=device)  # every loss since the start finite
        self.t_start, self.start_step, self.last_step, self.stopped = time.perf_counter(), step, step, False

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
        if exc_type is FloatingPointError:
            step = exc.args[0] if exc.args and isinstance(exc.args[0], int) else self.last_step + 1
            raise FloatingPointError(nan_message(step, self.ckpt_path, self.cfg["save_every"], self.nan_hint)) from None
        return False

    def add(self, row, loss, host=0.0):
        """One update's logged values `row` (on the device, no host sync) and its loss."""
        self.window.add(row, host)
        self.finite &= torch.isfinite(loss.detach())

    def due(self, step):
        return step % self.cfg["log_every"] == 0 or step == self.total

    def read(self):
        """Mean of the window's rows (list) and of its host values; resets the window.
        Raises FloatingPointError if a loss since the start was NaN or infinite."""
        if not bool(self.finite):
            raise FloatingPointError(self.last_step + 1)
        self._n = self.window.n
        values, host, self._seconds = self.window.read()
        return values, host

    def write(self, step, values, batch_size, **postfix):
        seconds = self._seconds
        self.writer.writerow([step] + [f"{v:.6g}" for v in values]
                             + [f"{seconds:.3f}", f"{self._n * batch_size / seconds:.1f}"])
        self.file.flush()
        self.progress.set_postfix(**{k: f"{v:.2f}" for k, v in postfix.items()}, refresh=False)
        if self.start_step is not None:  # once, after the first log interval
            print(eta_line(step, self.total, (time.perf_counter() - self.t_start) / (step - self.start_step)))
            self.start_step = None

    def end_step(self, step, model, optimizer):
        """After each update: checkpoint when due (never a model with a NaN loss); True when
        the loop must stop (budget/signal)."""
        self.progress.update(1)
        self.last_step = step
        self.stopped = step < self.total and self.budget.expired()
        if step % self.cfg["save_every"] == 0 or step == self.total or self.stopped:
            if not bool(self.finite):
                raise FloatingPointError(step)
            save_checkpoint(self.ckpt_path, model, optimizer, step, self.cfg, self.method, self.window.state())
        return self.stopped

    def close(self):
        self.budget.close()
        self.progress.close()
        self.file.close()

    def finish(self, step):
        """Print how to continue a paused run; True when training is finished."""
        if self.stopped:
            print(paused_message(self.cfg, step, self.total, self.method + ".py", self.argv, self.budget), flush=True)
        return not self.stopped


def nan_message(step, ckpt_path, save_every, hint):
    kept = (f"the last good checkpoint is kept in {ckpt_path}" if os.path.exists(ckpt_path)
            else f"no checkpoint was saved yet (the first is due at step {save_every})")
    return f"the loss became NaN or infinite by step {step}; {kept} — {hint}."


def paused_message(cfg, step, total, prog, argv, budget=None):
    why = (f"{budget.signalled} received" if budget is not None and budget.signalled
           else f"time budget of {cfg['time_budget']:g} min reached")
    return (f"{why} at step {step} of {total}; checkpoint saved in {cfg['out']}. "
            f"Continue with: {resume_command(prog, argv, cfg['out'])}")


# ---------------------------------------------------------------------------
# Time budget and progress
# ---------------------------------------------------------------------------

# Signals that ask a training run to stop at the next update with a checkpoint: `kill`
# (SIGTERM), and the pre-emption / time-limit warnings of SLURM and submitit (SIGUSR1/2).
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
# main(): one sentence per failure
# ---------------------------------------------------------------------------

def eval_data(cfg, load_dataset):
    """An evaluation's folder (created), data (the --eval-split) and evaluated rows: all, or
    --eval-samples of them drawn with seed + 1. -> (out, dataset, indices (N,), start time)."""
    os.makedirs(cfg["out"], exist_ok=True)
    ds = load_dataset(cfg, cfg["eval_split"])
    return cfg["out"], ds, metrics.eval_indices(len(ds), cfg["eval_samples"], cfg["seed"]), time.perf_counter()


def run(cfg, argv, train, evaluate, load_model):
    """One invocation of a script: print the merged config, then train and evaluate the
    finished run (unless --no-eval, or --time-budget paused it) or, with --eval-only,
    evaluate load_model(cfg, device) -> (model, step). Prints and returns the results."""
    device = nets.to_device(cfg["device"])
    print("config:\n" + format_config(cfg))
    if cfg["eval_only"]:
        model, step = load_model(cfg, device)
        res = evaluate(model, cfg, device, step)
    else:
        model, step, cfg, finished = train(cfg, device, argv)
        if cfg["no_eval"] or not finished:
            return None
        res = evaluate(model, cfg, device, step, log_path=os.path.join(cfg["out"], "log.csv"))
    print_summary(res)
    return res


def main(prog, make_config, run, argv=None):
    """Parse, run, and turn every expected failure into one sentence and exit status 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        cfg = make_config(argv)
        return run(cfg, argv)
    except (ValueError, OSError, FloatingPointError, RunError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2)


def print_summary(res, skip=("null_reasons",)):
    """The scalar results of an evaluation, as the last thing a run prints."""
    print(json.dumps({k: v for k, v in res.items() if k not in skip and not isinstance(v, (list, dict))}, indent=1))


def open_eval_folder(cfg):
    """An --eval-only / --pretrained run's folder: checked (it may replace an older
    evaluation, never a training run), created, and its eval_config.json written."""
    check_out_dir(cfg["out"], new_run=True, overwrite=cfg["overwrite"], evaluation=True)
    os.makedirs(cfg["out"], exist_ok=True)
    write_json(os.path.join(cfg["out"], "eval_config.json"), cfg)
