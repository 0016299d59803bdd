"""Figure helpers: image grids, latent traversals and training curves, saved as PNG (and an
animated traversal as GIF, written with Pillow).

Nothing here touches an equation of the papers: the method files decide *which*
latent vectors to decode (traversal ranges, ranking by KL, the discrete rows) and
hand this module images, decode functions and numbers to draw. Headless: matplotlib
runs on the Agg backend, so figures save on a server or in CI without a display.

Shapes: N images, C channels, H x W pixels, R rows, L latent size.
"""

import csv

import numpy as np
import torch


def _pyplot():
    # Imported lazily so that `import viz` costs nothing and never needs a display.
    import matplotlib

    if "inline" not in matplotlib.get_backend():  # a notebook keeps its inline plots
        matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _wrap(text, width_in, fontsize):
    """`text` broken into lines that fit `width_in` inches at `fontsize` points."""
    import textwrap

    chars = max(20, int(width_in * 72.0 / (0.55 * fontsize)))  # ~0.55 em per character
    return "\n".join(textwrap.wrap(text, chars))


def _as_numpy_images(images):
    """(N, C, H, W) tensor/array in [0, 1] -> (N, H, W, C) float array clipped to [0, 1]."""
    if isinstance(images, torch.Tensor):
        images = images.detach().float().cpu().numpy()
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {images.shape}.")
    return np.clip(images.transpose(0, 2, 3, 1), 0.0, 1.0)  # (N, H, W, C)


def tile(images, nrow, pad=1, pad_value=1.0):
    """Arrange (N, C, H, W) images into one (rows*H', nrow*W', C) array, row by row."""
    imgs = _as_numpy_images(images)  # (N, H, W, C)
    n, h, w, c = imgs.shape
    rows = int(np.ceil(n / nrow))
    hp, wp = h + pad, w + pad
    canvas = np.full((rows * hp + pad, nrow * wp + pad, c), pad_value, dtype=np.float32)
    for i in range(n):
        r, q = divmod(i, nrow)
        canvas[pad + r * hp: pad + r * hp + h, pad + q * wp: pad + q * wp + w] = imgs[i]
    return canvas  # (rows*(H+pad)+pad, nrow*(W+pad)+pad, C)


def save_image_grid(images, path, nrow, row_labels=None, title=None, col_labels=None):
    """Save (N, C, H, W) images in [0, 1] as a grid with `nrow` images per row.

    `row_labels` (one string per row) are written left of each row, e.g. the KL of
    the traversed unit in nats; `col_labels` above each column.
    """
    plt = _pyplot()
    canvas = tile(images, nrow)
    n_rows = int(np.ceil(len(images) / nrow))
    h_img = canvas.shape[0] / max(n_rows, 1)
    scale = 0.9 / 34.0  # about 0.9 inch per 32-pixel cell keeps labels legible
    fig_w = canvas.shape[1] * scale + (1.6 if row_labels else 0.2)
    fig_h = canvas.shape[0] * scale + (0.5 if title else 0.1) + (0.3 if col_labels else 0.0)
    fig, ax = plt.subplots(figsize=(max(fig_w, 2.0), max(fig_h, 1.0)))
    cmap = "gray" if canvas.shape[2] == 1 else None
    ax.imshow(canvas[..., 0] if canvas.shape[2] == 1 else canvas, cmap=cmap, vmin=0.0, vmax=1.0,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)
    if row_labels:
        for r, label in enumerate(row_labels):
            ax.text(-4, (r + 0.5) * h_img, str(label), ha="right", va="center", fontsize=8)
    if col_labels:
        w_img = canvas.shape[1] / nrow
        for q, label in enumerate(col_labels):
            ax.text((q + 0.5) * w_img, -3, str(label), ha="center", va="bottom", fontsize=8)
    if title:
        # Column labels sit just above the images; lift the title clear of them.
        ax.set_title(title, fontsize=9, pad=17 if col_labels else 6)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


@torch.no_grad()
def save_traversal(decode_fn, latents, path, row_labels=None, title=None, col_labels=None,
                   batch_size=256):
    """Decode a (R, Q, L) block of latent vectors and save it as an R x Q grid.

    `decode_fn` maps a (B, L) tensor to images (B, C, H, W) in [0, 1] (the method
    file applies the sigmoid to its decoder's logits); rows are typically one
    latent unit each, columns the traversal values.
    """
    latents = torch.as_tensor(latents)
    if latents.ndim != 3:
        raise ValueError(f"expected latents of shape (rows, columns, latent), got {tuple(latents.shape)}.")
    r, q, l = latents.shape
    flat = latents.reshape(r * q, l)  # (R*Q, L)
    images = torch.cat([decode_fn(flat[i:i + batch_size]) for i in range(0, r * q, batch_size)])
    return save_image_grid(images.cpu(), path, nrow=q, row_labels=row_labels, title=title,
                           col_labels=col_labels)


def plot_curves(rows, path, x=None, xlabel="iteration", ylabel="", title=None, logy=False,
                hlines=None):
    """Line plot of named series: rows = {name: (T,) values}, x = (T,) shared abscissa.

    `hlines` = {label: value} draws dashed reference lines (e.g. log K, a paper value),
    named in the legend (a label written on its own line would be struck through by it).
    Many entries put the legend right of the axes, clear of the curves.
    """
    plt = _pyplot()
    hlines = dict(hlines or {})
    n_entries = len(rows) + len(hlines)
    outside = n_entries > 6
    fig, ax = plt.subplots(figsize=(7.4 if outside else 6.0, 3.6))
    styles = ("-", "--", ":", "-.")  # matplotlib repeats its 10 colours: vary the dash after that
    for i, (name, values) in enumerate(rows.items()):
        values = np.asarray(values, dtype=float)
        xs = np.arange(len(values)) if x is None else np.asarray(x, dtype=float)
        ax.plot(xs, values, label=str(name), linewidth=1.2, linestyle=styles[(i // 10) % len(styles)])
    ref_styles = ((0, (5, 2)), (0, (1, 1.5)), (0, (6, 2, 1, 2)), (0, (2, 2)))
    for i, (label, value) in enumerate(hlines.items()):
        ax.axhline(value, linestyle=ref_styles[i % len(ref_styles)], color="0.25" if i % 2 == 0 else "0.55",
                   linewidth=1.0, label=str(label))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(_wrap(title, fig.get_size_inches()[0] - 0.8, 10), fontsize=10)
    if n_entries > 1:
        if outside:
            ax.legend(fontsize=8, ncol=2 if n_entries > 14 else 1, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                      borderaxespad=0.0)
        else:
            ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_matrix(matrix, path, xlabel="", ylabel="", title=None, xticklabels=None, yticklabels=None,
                fmt="d", text=None, vmin=None, vmax=None, right_labels=None, fontsize=8):
    """Heat map with the value printed in each cell (confusion matrices, MI matrices).

    `text` (same shape, strings) replaces the formatted values; `right_labels` (one per
    row) are written right of the rows (then no colour bar). Cell text is `fontsize`
    points (8 pt = 11 px at the saved 100 dpi) and the cells are sized to hold it.
    """
    plt = _pyplot()
    m = np.asarray(matrix)
    if text is None:
        text = [[format(m[i, j], fmt) for j in range(m.shape[1])] for i in range(m.shape[0])]
    widest = max([len(str(t)) for row in text for t in row] + [1])
    cell_w = max(0.5, 0.095 * fontsize / 8.0 * widest + 0.2)                       # inches per column
    cell_h = max(0.36, 0.045 * fontsize)                                             # inches per row
    ylab = max([len(str(t)) for t in (yticklabels if yticklabels is not None else [""])] + [3])
    fig_w = max(cell_w * m.shape[1] + 0.07 * ylab + (0.9 if right_labels is not None else 1.3) + 0.8,
                0.085 * max([len(t) for t in str(title or "").split("\n")] + [0]) + 0.6)
    fig_h = max(cell_h * m.shape[0] + 1.9, 3.2)
    fig, ax = plt.subplots(figsize=(fig_w, fig_h))
    im = ax.imshow(m, cmap="Blues", aspect="auto", vmin=vmin, vmax=vmax)
    if right_labels is None:
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    top = float(np.nanmax(m)) if vmax is None and m.size else (vmax or 0.0)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(text[i][j]), ha="center", va="center", fontsize=fontsize,
                    color="white" if m[i, j] > top / 2.0 else "black")
    ax.set_xticks(range(m.shape[1]))
    ax.set_yticks(range(m.shape[0]))
    if xticklabels is not None:
        rotate = max(len(str(t)) for t in xticklabels) > 2
        ax.set_xticklabels(xticklabels, fontsize=8, rotation=45 if rotate else 0, ha="right" if rotate else "center")
    if yticklabels is not None:
        ax.set_yticklabels(yticklabels, fontsize=8)
    if right_labels is not None:
        twin = ax.twinx()
        twin.set_ylim(ax.get_ylim())
        twin.set_yticks(range(m.shape[0]))
        twin.set_yticklabels([str(t) for t in right_labels], fontsize=8)
        twin.tick_params(length=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        # A title wider than the heat map would be cut at the canvas edge: wrap it to fit.
        lines = [_wrap(t, fig_w - 0.3, 10) for t in str(title).split("\n")]
        ax.set_title("\n".join(lines), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_scatter_lines(x, ys, path, xlabel="", ylabel="", title=None, labels=None):
    """Several y-series against one x, as lines with markers (latent-vs-factor plots)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(3.2, 2.4))
    for i, y in enumerate(ys):
        ax.plot(np.asarray(x), np.asarray(y), marker=".", markersize=3, linewidth=1.0,
                label=None if labels is None else labels[i])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    if labels is not None:
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_line_grid(panels, path, row_labels=None, col_labels=None, series_labels=None, title=None):
    """A grid of small line plots: panels[r][c] is a list of (x, y) series drawn in one axes.

    Series i has the same colour in every panel and `series_labels[i]` in the legend
    (e.g. the mean latent against a factor's value, one line per shape: Chen et al. Fig. S4).
    """
    plt = _pyplot()
    n_rows, n_cols = len(panels), max(len(r) for r in panels)
    width = max(1.5 * n_cols + 0.8, 3.0)
    fig, axes = plt.subplots(n_rows, n_cols, squeeze=False, figsize=(width, 1.3 * n_rows + 0.6))
    for r, row in enumerate(panels):
        for c, series in enumerate(row):
            for i, (xs, ys) in enumerate(series):
                axes[r, c].plot(np.asarray(xs), np.asarray(ys), linewidth=1.0, color=f"C{i % 10}",
                                label=None if series_labels is None else series_labels[i])
            axes[r, c].tick_params(labelsize=6)
    for r, label in enumerate(row_labels or []):
        axes[r, 0].set_ylabel(str(label), fontsize=8)
    for c, label in enumerate(col_labels or []):
        axes[0, c].set_title(str(label), fontsize=8)
    if series_labels is not None:
        axes[0, -1].legend(fontsize=6, loc="best")
    if title:
        fig.suptitle(_wrap(title, width, 9), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def read_log(path):
    """Read a method's log.csv into {column: float array} for plot_curves. Rows starting
    with '#' are notes (a resume with changed flags), not values."""
    with open(path, newline="") as f:
        reader = csv.DictReader(line for line in f if not line.startswith("#"))
        cols = {name: [] for name in reader.fieldnames or []}
        for row in reader:
            for name in cols:
                value = row.get(name, "")
                cols[name].append(float(value) if value not in ("", None) else np.nan)
    return {name: np.asarray(v, dtype=float) for name, v in cols.items()}


# --------------------------------------------------------------------------- figure assembly
# What the three method files' save_figures share: which latents to decode stays there.


def save_reconstructions(x, recon, path, title="top: data, bottom: reconstruction"):
    """x, recon (n, C, H, W) in [0, 1]: data above, reconstruction below."""
    return save_image_grid(torch.cat([x.cpu(), recon.cpu()]), path, nrow=len(x), row_labels=["data", "recon"],
                           title=title)


def informative_units(kl_units, threshold, max_units=None):
    """The units whose KL exceeds `threshold` (nats), largest KL first, and always at least
    the top one (a collapsed model still shows its best unit); at most `max_units`.
    -> (units list, number of units left out as inactive, KL <= threshold)."""
    kl = np.asarray(kl_units, dtype=float)
    ranked = [int(j) for j in np.argsort(-kl, kind="stable")]
    units = [j for j in ranked if kl[j] > threshold] or ranked[:1]
    n_inactive = len(kl) - len(units)
    return (units if max_units is None else units[:max_units]), n_inactive


def inactive_note(n_inactive, threshold):
    """Title text for the units a figure leaves out, "" when none."""
    if not n_inactive:
        return ""
    return f"{n_inactive} inactive unit{'s' if n_inactive != 1 else ''} (KL <= {threshold:g} nats) not shown"


def value_labels(values):
    """Column labels for traversed values, e.g. "-1.64"."""
    return [f"{float(v):.2f}" for v in values]


def unit_traversals(values, kl_units, base=None, units=None):
    """One row per continuous unit in `units` (default: all, ranked by KL, largest first):
    unit j takes `values` (cols,), the other units 0, and `base` (L_b,) (e.g. a one-hot
    discrete code) is appended to every latent. -> rows (R, cols, D + L_b), row labels
    ("z3  KL 2.41": the unit and its KL in nats)."""
    d, n_cols = len(kl_units), len(values)
    base = torch.zeros(0) if base is None else torch.as_tensor(base, dtype=torch.float32)
    order = np.argsort(-np.asarray(kl_units, dtype=float), kind="stable") if units is None else units
    rows = []
    for j in order:
        z = torch.zeros(n_cols, d)                                        # (cols, D)
        z[:, j] = torch.as_tensor(values, dtype=torch.float32)
        rows.append(torch.cat([z, base.expand(n_cols, -1)], dim=1))       # (cols, D + L_b)
    return torch.stack(rows), [f"z{j}  KL {float(kl_units[j]):.2f}" for j in order]


def _gif_font(size):
    from PIL import ImageFont

    try:  # matplotlib ships DejaVu Sans: the same font as the PNGs, on every machine
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except Exception:  # noqa: BLE001 - any font will do
        return ImageFont.load_default()


@torch.no_grad()
def save_traversal_gif(decode_fn, latents, path, values, labels=None, tile=64, ncol=5, frame_ms=150,
                       batch_size=256):
    """An animated traversal (the look of the disentangling-vae repository's GIFs).

    latents (R, Q, L) as save_traversal takes them: row r is one unit's traversal over the
    Q `values`. Frame q shows every row's image at value q side by side (`ncol` per grid
    row, each `tile` pixels square with `labels[r]` under it), the value written on top;
    the frames go forth and back (2Q - 2 frames, looping). Written with Pillow.
    """
    from PIL import Image, ImageDraw

    latents = torch.as_tensor(latents)
    if latents.ndim != 3:
        raise ValueError(f"expected latents of shape (rows, columns, latent), got {tuple(latents.shape)}.")
    r, q, l = latents.shape
    if len(values) != q:
        raise ValueError(f"{len(values)} values for {q} columns of latents.")
    flat = latents.reshape(r * q, l)                                      # (R*Q, L)
    images = torch.cat([decode_fn(flat[i:i + batch_size]) for i in range(0, r * q, batch_size)])
    imgs = _as_numpy_images(images.cpu())                                 # (R*Q, H, W, C)
    imgs = (imgs * 255.0 + 0.5).astype(np.uint8).reshape(r, q, *imgs.shape[1:])
    mode = "L" if imgs.shape[-1] == 1 else "RGB"
    labels = [""] * r if labels is None else [str(t) for t in labels]
    cols = min(ncol, r)
    grid_rows = int(np.ceil(r / cols))
    label_h, head_h, pad = 15, 20, 2
    font, head_font = _gif_font(10), _gif_font(13)
    cell = max([tile] + [int(np.ceil(font.getlength(t))) + 4 for t in labels])  # a label fits under its tile
    grid_w = cols * (cell + pad) + pad
    width = max(grid_w, 150)                               # the value above fits too
    left = (width - grid_w) // 2
    height = head_h + grid_rows * (tile + label_h + pad)
    frames = []
    steps = list(range(q)) + list(range(q - 2, 0, -1))                    # forth and back
    for k in steps:
        canvas = Image.new(mode, (width, height), 255 if mode == "L" else (255, 255, 255))
        draw = ImageDraw.Draw(canvas)
        draw.text((width / 2, head_h / 2), f"z_j = {float(values[k]):+.2f}", fill=0 if mode == "L" else (0, 0, 0),
                  font=head_font, anchor="mm")
        for u in range(r):
            gr, gc = divmod(u, cols)
            x0, y0 = left + pad + gc * (cell + pad) + (cell - tile) // 2, head_h + gr * (tile + label_h + pad)
            arr = imgs[u, k][..., 0] if mode == "L" else imgs[u, k]
            im = Image.fromarray(arr, mode)
            if im.size != (tile, tile):
                im = im.resize((tile, tile), Image.NEAREST if tile % arr.shape[0] == 0 else Image.BILINEAR)
            canvas.paste(im, (x0, y0))
            draw.text((x0 + tile / 2, y0 + tile + label_h / 2), labels[u], fill=0 if mode == "L" else (0, 0, 0),
                      font=font, anchor="mm")
        frames.append(canvas if mode == "L" else canvas.quantize(colors=256, dither=Image.Dither.NONE))
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=frame_ms, loop=0, optimize=False,
                   disposal=1)
    return path


def save_log_figures(log_path, out, kl_title, hlines=None):
    """From log.csv: the KL of every unit (and discrete variable) during training and the
    loss. Returns the log (dict of arrays), or None when there is none to draw."""
    import os

    if not log_path or not os.path.exists(log_path):
        return None
    log = read_log(log_path)
    if len(log.get("step", [])) == 0:
        return None
    curves = {name[3:]: v for name, v in log.items() if name.startswith("kl_") and name[3] in "zc"}
    plot_curves(curves, os.path.join(out, "kl_during_training.png"), x=log["step"], ylabel="nats, batch mean",
                title=kl_title, hlines=hlines)
    plot_curves({"loss": log["loss"], "recon": log["recon"]}, os.path.join(out, "loss.png"), x=log["step"],
                ylabel="nats per image", title="training loss", logy=True)
    return log


def _class_label(name):
    return f"digit {name}" if str(name).isdigit() else str(name)


def code_order(pred, labels, n_codes, class_names=None, prefix="c"):
    """The one order of the discrete codes 0..K-1 that every per-code figure uses (the
    confusion matrix, samples per discrete value, the discrete traversal): row k holds the
    code Hungarian-matched to class k, the unmatched codes after them (most used first).
    Without labels, 0..K-1. -> (order (K,) list of codes, row labels such as
    "c=8 (digit 0)", the (K, C) count matrix in that order or None)."""
    if labels is None or pred is None:
        return list(range(n_codes)), [f"{prefix}={k}" for k in range(n_codes)], None
    from scipy.optimize import linear_sum_assignment

    pred, labels = torch.as_tensor(pred).long(), torch.as_tensor(labels).long()
    n_classes = len(class_names) if class_names is not None else int(labels.max()) + 1
    m = torch.zeros(n_codes, n_classes, dtype=torch.long)
    m.index_put_((pred, labels), torch.ones_like(pred), accumulate=True)  # (K, C)
    rows, cols = linear_sum_assignment(m.numpy(), maximize=True)
    matched = {int(r): int(c) for r, c in zip(rows, cols)}               # code -> class
    order = [int(r) for _, r in sorted(zip(cols, rows))]                 # by class
    used = m.sum(dim=1)
    order += sorted((k for k in range(n_codes) if k not in matched), key=lambda k: (-int(used[k]), k))
    names = [str(c) for c in class_names] if class_names is not None else [str(c) for c in range(n_classes)]
    row_labels = [f"{prefix}={k} (unused)" if used[k] == 0 else
                  f"{prefix}={k} ({_class_label(names[matched[k]])})" if k in matched else f"{prefix}={k} (unmatched)"
                  for k in order]
    return order, row_labels, m[order].numpy()


def hungarian_confusion(pred, labels, n_codes, n_classes):
    """The (K, C) confusion matrix of codes 0..K-1 (unused codes included) against classes,
    rows reordered so that each class's Hungarian-matched code sits on the diagonal (the
    unmatched codes last). -> matrix, row names ("c<k>")."""
    order, _, m = code_order(pred, labels, n_codes, [str(c) for c in range(n_classes)])
    return m, [f"c{k}" for k in order]


def save_latent_vs_factor(mu, factors, factor_names, factor_sizes, path, series_names, active_variance=1e-2):
    """Chen et al. supp. D / Fig. S4: for each factor (rows) but the first and each active
    unit (columns), the mean of E[z_j|x] over the images with that factor value, one line
    per value of the first factor (dSprites: per shape). mu (N, D) posterior means,
    factors (N, K). A unit is active when Var_x E[z_j|x] > active_variance (0.01, as in the
    authors' plot_latent_vs_true.py)."""
    mu = torch.as_tensor(mu).double()
    active = torch.nonzero(mu.var(dim=0) > active_variance).flatten().tolist()
    title = "mean latent vs factor value, one line per shape (supp. D, Fig. S4)"
    if not active:  # an untrained or collapsed model: show the most variable units, say so
        active = torch.argsort(mu.var(dim=0), descending=True)[:3].tolist()
        title = f"no unit has Var E[z|x] > {active_variance:g}, the 3 most variable shown; " + title
    rows = list(range(1, len(factor_names)))
    panels = []                                                           # [factor][unit] -> (x, y) per series
    for k in rows:
        size = factor_sizes[k]
        panels.append([[] for _ in active])
        for s in range(factor_sizes[0]):
            sel = factors[:, 0] == s                                      # (N,) images of series s
            idx = factors[sel, k]                                         # (N_s,) their value of factor k
            count = torch.bincount(idx, minlength=size).double()          # (V,)
            for c, j in enumerate(active):
                total = torch.zeros(size, dtype=torch.float64).index_add_(0, idx, mu[sel, j])  # (V,)
                mean = (total / count.clamp_min(1)).numpy()               # (V,) E[z_j | v_k, s]
                mean[count.numpy() == 0] = np.nan
                panels[-1][c].append((np.arange(size), mean))
    return save_line_grid(panels, path, row_labels=[factor_names[k] for k in rows],
                          col_labels=[f"z{j}" for j in active], series_labels=list(series_names), title=title)


def confusion_title(title, accuracy, n):
    """`title` and, below it, the accuracies {mapping: fraction} of the code read as a class."""
    accs = ", ".join(f"{name} {100.0 * float(v):.1f} %" for name, v in (accuracy or {}).items() if v is not None)
    return f"{title}\naccuracy {accs}, {n} images" if accs else title


def save_confusion(pred, labels, n_codes, class_names, path, ylabel, title, accuracy=None, prefix="c"):
    """K x C confusion matrix of a discrete code against the labels: every code 0..K-1 a
    row (unused ones too) in code_order's class-matched order (the order of the per-code
    figures), each cell the percentage of its row's images, the row's count on the right;
    `accuracy` ({"Hungarian": 0.887, "majority": 0.9}) goes into the title.
    -> (path, order, row labels)."""
    order, row_labels, conf = code_order(pred, labels, n_codes, class_names, prefix)
    n_row = conf.sum(axis=1, keepdims=True)                                # (K, 1)
    pct = 100.0 * conf / np.maximum(n_row, 1)                             # (K, C) % of the row
    text = [["" if c == 0 else ("<1" if p < 0.5 else f"{p:.0f}") for c, p in zip(crow, prow)]
            for crow, prow in zip(conf, pct)]
    save_matrix(pct, path, xlabel="true class (cells: % of the row's images)", ylabel=ylabel,
                title=confusion_title(title, accuracy, len(torch.as_tensor(pred))), xticklabels=list(class_names),
                yticklabels=row_labels, text=text, vmin=0.0, vmax=100.0,
                right_labels=[f"n={int(v)}" for v in n_row[:, 0]])
    return path, order, row_labels


def latents_per_code(z, codes):
    """One row per discrete code: z (cols, D) with the code c (L_c,) appended to each of
    its latents (e.g. a one-hot value of the discrete variable). -> (rows, cols, D + L_c)."""
    return torch.stack([torch.cat([z, torch.as_tensor(c, dtype=z.dtype).expand(len(z), -1)], dim=1)
                        for c in codes])


def unit_per_code(values, unit, n_units, codes):
    """The discrete traversal: one row per discrete code, unit `unit` of n_units taking
    `values` (cols,) and the other units 0. -> (rows, cols, n_units + L_c)."""
    z = torch.zeros(len(values), n_units)                                 # (cols, D)
    if n_units:
        z[:, unit] = values
    return latents_per_code(z, codes)


def save_factor_figures(out, mig_res, mu, ds, indices, series_names=None):
    """The matrix behind MIG, I(z_j; v_k) / H(v_k) (Chen et al. eq. 7), and with
    `series_names` (the dSprites grid: the shapes) the mean latent against each factor
    (supp. D, Fig. S4). mig_res: metrics.factor_scores's MIG result or None; mu (N, D) the
    codes of ds[indices]."""
    import os

    if mig_res is not None:
        save_matrix(mig_res["mi_normalized"], os.path.join(out, "mig_matrix.png"), xlabel="factor v_k",
                    ylabel="latent", title=f"I(z_j; v_k) / H(v_k), {mig_res['headline']} (eq. 7)",
                    xticklabels=[ds.factor_names[k] for k in mig_res["factors"]], yticklabels=mig_res["latents"],
                    fmt=".2f")
    if series_names is not None and mu.shape[1]:
        save_latent_vs_factor(mu, ds.factors[indices], ds.factor_names, ds.factor_sizes,
                              os.path.join(out, "latent_vs_factor.png"), series_names)


def save_code_figures(decode_fn, out, z, values, unit, codes, labels, titles):
    """Two figures with one row per discrete code (`codes`, row labels `labels`, both in
    code_order's order): samples_per_discrete.png, the code appended to z (cols, D) ~ p(z),
    the same z down each column (titles[0]); traversal_discrete.png, unit `unit` taking
    `values` (cols,) (written above the columns) and the other units 0 (titles[1])."""
    import os

    save_traversal(decode_fn, latents_per_code(z, codes), os.path.join(out, "samples_per_discrete.png"),
                   row_labels=labels, title=titles[0])
    save_traversal(decode_fn, unit_per_code(values, unit, z.shape[1], codes),
                   os.path.join(out, "traversal_discrete.png"), row_labels=labels, title=titles[1],
                   col_labels=value_labels(values) if z.shape[1] else None)
