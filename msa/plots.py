"""Figures shared by the phases (matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

import textwrap
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from msa.io import save_figure

LABEL_COLORS = {"negative": "#d1495b", "neutral": "#8d99ae", "positive": "#2a9d8f"}


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 110, "axes.spines.top": False, "axes.spines.right": False})
    return plt


def training_curves(history: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """Loss (train/val) and validation accuracy / weighted F1 / neutral F1 per epoch."""
    plt = pyplot()
    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.plot(ep, [h["train_loss"] for h in history], marker="o", ms=3, label="train loss")
    if "val_loss" in history[0]:
        a.plot(ep, [h["val_loss"] for h in history], marker="o", ms=3, label="val loss")
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.legend(frameon=False)
    for key, name in (("accuracy", "accuracy"), ("weighted_f1", "weighted F1"), ("f1_neutral", "neutral F1")):
        if key in history[0]:
            b.plot(ep, [h[key] for h in history], marker="o", ms=3, label=name)
    if "weighted_f1" in history[0]:
        best = int(np.argmax([h["weighted_f1"] for h in history]))
        b.axvline(ep[best], color="grey", ls=":", lw=1)
        b.annotate(f"best {history[best]['weighted_f1']:.3f}", (ep[best], history[best]["weighted_f1"]),
                   textcoords="offset points", xytext=(4, 6), fontsize=8)
    b.set_xlabel("epoch")
    b.set_ylabel("validation")
    b.set_ylim(0, 1)
    b.legend(frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    out = save_figure(fig, path)
    plt.close(fig)
    return out


def confusion_matrix(cm: Sequence[Sequence[int]], labels: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Counts with row-normalised shading (recall per true class)."""
    plt = pyplot()
    cm = np.asarray(cm, dtype=float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.6, 4))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{int(cm[i, j])}\n{100 * norm[i, j]:.0f}%", ha="center", va="center", fontsize=9,
                    color="white" if norm[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    out = save_figure(fig, path)
    plt.close(fig)
    return out


def grouped_bars(table, metrics: Sequence[tuple[str, str]], path: str | Path, title: str = "",
                 ylabel: str = "validation score", ylim: tuple[float, float] | None = None) -> Path:
    """One group per row of ``table`` (a DataFrame indexed by method), one bar per metric, error bars = std.

    ``table`` needs columns ``<metric>_mean`` and ``<metric>_std``; ``metrics`` are (column stem, legend name).
    """
    plt = pyplot()
    names = list(table.index)
    width = 0.8 / max(1, len(metrics))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(names) + 2), 4.2))
    for j, (key, label) in enumerate(metrics):
        xs = np.arange(len(names)) + (j - (len(metrics) - 1) / 2) * width
        bars = ax.bar(xs, table[f"{key}_mean"], width, yerr=table[f"{key}_std"], capsize=3, label=label)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    ax.set_xticks(range(len(names)), names, rotation=15)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.legend(frameon=False, ncol=len(metrics), loc="upper center", bbox_to_anchor=(0.5, -0.15))
    ax.set_title(title)
    fig.tight_layout()
    out = save_figure(fig, path)
    plt.close(fig)
    return out


def reliability_bins(proba, y_true, n_bins: int = 15) -> dict:
    """Per equal-width confidence bin (as :func:`msa.metrics.expected_calibration_error` bins): ``count``,
    ``accuracy`` and mean ``confidence`` (NaN for an empty bin), the bin ``edges`` and the ``ece``."""
    from msa.metrics import expected_calibration_error

    p = np.asarray(proba, dtype=float)
    y = np.asarray(y_true, dtype=int)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(float)
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(bins, weights=correct, minlength=n_bins) / count
        mean_conf = np.bincount(bins, weights=conf, minlength=n_bins) / count
    return {"edges": np.linspace(0, 1, n_bins + 1), "count": count, "accuracy": acc, "confidence": mean_conf,
            "ece": expected_calibration_error(p, y, n_bins=n_bins)}


def reliability_diagrams(panels: dict, path: str | Path, n_bins: int = 15, ncols: int = 2, title: str = "") -> Path:
    """Reliability diagrams, one panel per entry of ``panels`` (``{name: (proba (N, C), y_true (N,))}``).

    Bars: accuracy per equal-width confidence bin, with the number of samples in the bin written at its foot
    (a bin of a few samples says little); red: the gap to the bin's mean confidence; dashed: the diagonal of
    perfect calibration. The panel title gives the ECE over the same bins."""
    plt = pyplot()
    names = list(panels)
    ncols = max(1, min(ncols, len(names)))
    nrows = int(np.ceil(len(names) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.7 * nrows), squeeze=False)
    width = 1.0 / n_bins
    for ax, name in zip(axes.flat, names):
        proba, y = panels[name]
        r = reliability_bins(proba, y, n_bins)
        left = r["edges"][:-1]
        has = r["count"] > 0
        acc = np.where(has, r["accuracy"], 0.0)
        conf = np.where(has, r["confidence"], 0.0)
        ax.bar(left, acc, width, align="edge", color="#4c78a8", edgecolor="white", lw=0.6, label="accuracy")
        ax.bar(left, np.abs(conf - acc), width, bottom=np.minimum(acc, conf), align="edge", color="#d1495b",
               alpha=0.35, edgecolor="#d1495b", lw=0.6,
               label="gap to mean confidence (dark over a bar: under-confident)")
        ax.plot([0, 1], [0, 1], ls="--", color="black", lw=0.9, label="perfect calibration")
        for x, n in zip(left[has], r["count"][has]):
            ax.text(x + width / 2, 0.015, str(int(n)), ha="center", va="bottom", fontsize=6, rotation=90,
                    color="white" if n else "black")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{name}\nECE {r['ece']:.3f} ({n_bins} bins), n = {int(r['count'].sum())}", fontsize=9)
        ax.grid(alpha=0.25, lw=0.5)
        ax.set_axisbelow(True)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("confidence (max probability)")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, frameon=False, fontsize=8,
               title="numbers in the bars: samples per bin", title_fontsize=7)
    fig.suptitle(title)
    height = fig.get_size_inches()[1]
    fig.tight_layout(rect=(0, 0.55 / height, 1, 1 - 0.15 / height))
    out = save_figure(fig, path)
    plt.close(fig)
    return out


def confusion_grid(matrices: dict, labels: Sequence[str], path: str | Path, ncols: int = 2,
                   title: str = "") -> Path:
    """Several confusion matrices side by side (``{name: cm}``, rows = true class); counts with row-normalised
    shading (recall per true class), as :func:`confusion_matrix`."""
    plt = pyplot()
    names = list(matrices)
    ncols = max(1, min(ncols, len(names)))
    nrows = int(np.ceil(len(names) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.9 * ncols, 3.6 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        cm = np.asarray(matrices[name], dtype=float)
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(labels)):
            for j in range(len(labels)):
                ax.text(j, i, f"{int(cm[i, j])}\n{100 * norm[i, j]:.0f}%", ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_title(name, fontsize=9)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("predicted")
    for ax in axes[:, 0]:
        ax.set_ylabel("true")
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.15 / fig.get_size_inches()[1]))
    out = save_figure(fig, path)
    plt.close(fig)
    return out


def metric_panels(table, group: str, hue: str, metrics: Sequence[tuple[str, str]], path: str | Path,
                  title: str = "", ylim: tuple[float, float] | None = None) -> Path:
    """One panel per metric; in each, one group of bars per value of column ``group`` (e.g. the loss) and one
    bar per value of column ``hue`` (e.g. the sampler), error bars = std, the mean written above each bar.

    ``table`` has one row per (group, hue) with columns ``group``, ``hue``, ``<metric>_mean``, ``<metric>_std``;
    ``metrics`` are (column stem, panel title)."""
    plt = pyplot()
    groups = list(dict.fromkeys(table[group]))
    hues = list(dict.fromkeys(table[hue]))
    width = 0.8 / max(1, len(hues))
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(4.5, 1.1 * len(groups) * len(hues) / 2 + 2.5)
                                                        * len(metrics), 4.0), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, name) in zip(axes[0], metrics):
        for j, h in enumerate(hues):
            rows = table[table[hue] == h].set_index(group).reindex(groups)
            xs = np.arange(len(groups)) + (j - (len(hues) - 1) / 2) * width
            bars = ax.bar(xs, rows[f"{key}_mean"], width, yerr=rows[f"{key}_std"], capsize=3, label=str(h),
                          color=colors[j % len(colors)], error_kw={"lw": 1})
            for bar, m, s in zip(bars, rows[f"{key}_mean"], rows[f"{key}_std"].fillna(0.0)):
                ax.annotate(f"{m:.3f}\n±{s:.3f}", (bar.get_x() + bar.get_width() / 2, m + s), ha="center",
                            va="bottom", fontsize=6.5, textcoords="offset points", xytext=(0, 2))
        ax.set_xticks(range(len(groups)), groups)
        ax.set_title(name, fontsize=10)
        if ylim:
            ax.set_ylim(*ylim)
        ax.grid(axis="y", alpha=0.25, lw=0.5)
        ax.set_axisbelow(True)
    axes[0][0].set_ylabel("validation score")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, title=hue, loc="upper right", frameon=False, fontsize=8, title_fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 0.93, 1))
    out = save_figure(fig, path)
    plt.close(fig)
    return out


def radar_chart(table, metrics: Sequence[tuple[str, str]], path: str | Path, title: str = "",
                panels: dict[str, Sequence[str]] | None = None, rlim: tuple[float, float] | None = None,
                styles: dict[str, dict] | None = None, ncols: int = 2) -> Path:
    """Radar (spider) chart: one axis per metric, one closed polygon per row of ``table`` (indexed by name,
    columns ``<metric>_mean``; a ``<metric>_std`` column, when present, is drawn as a light band of ± std).

    ``panels`` maps a panel title to the row names drawn in it (default: one panel with every row); ``rlim``
    fixes the radial range (default: from a little under the smallest value, rounded down to 0.1, to the
    largest rounded up, so that small differences stay visible; the range is printed under each panel);
    ``styles`` gives matplotlib line keywords per row name (``color``, ``ls``, ``marker``, ...)."""
    plt = pyplot()
    panels = dict(panels) if panels else {"": list(table.index)}
    styles = styles or {}
    keys = [k for k, _ in metrics]
    means = table[[f"{k}_mean" for k in keys]].to_numpy(dtype=float)
    if rlim is None:
        finite = means[np.isfinite(means)]
        lo = max(0.0, np.floor((finite.min() - 0.05) * 10) / 10) if finite.size else 0.0
        hi = min(1.0, np.ceil((finite.max() + 0.02) * 10) / 10) if finite.size else 1.0
        rlim = (lo, max(hi, lo + 0.1))
    angles = np.linspace(0, 2 * np.pi, len(keys), endpoint=False)
    closed = np.concatenate([angles, angles[:1]])
    ncols = max(1, min(ncols, len(panels)))
    nrows = int(np.ceil(len(panels) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.0 * ncols, 5.6 * nrows), squeeze=False,
                             subplot_kw={"projection": "polar"})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "osD^v<>ph"
    for ax, (name, rows) in zip(axes.flat, panels.items()):
        for i, row in enumerate(rows):
            r = table.loc[row]
            vals = np.array([float(r[f"{k}_mean"]) for k in keys])
            style = {"color": colors[i % len(colors)], "marker": markers[i % len(markers)], "lw": 1.6, "ms": 4,
                     **styles.get(row, {})}
            ax.plot(closed, np.concatenate([vals, vals[:1]]), label=row, **style)
            if all(f"{k}_std" in r for k in keys):
                std = np.nan_to_num(np.array([float(r[f"{k}_std"]) for k in keys]))
                if std.any():
                    ax.fill_between(closed, np.concatenate([vals - std, vals[:1] - std[:1]]),
                                    np.concatenate([vals + std, vals[:1] + std[:1]]), color=style["color"],
                                    alpha=0.12, lw=0)
        ax.set_xticks(angles, [label for _, label in metrics], fontsize=9)
        ax.set_ylim(*rlim)
        ticks = np.linspace(rlim[0], rlim[1], 5)
        ax.set_yticks(ticks, [f"{t:.2f}" for t in ticks], fontsize=7, color="#555555")
        for t in ax.get_yticklabels():
            t.set_bbox({"facecolor": "white", "alpha": 0.75, "lw": 0, "pad": 0.5})
        ax.set_rlabel_position(180 / len(keys))  # between the first two axes
        ax.tick_params(axis="x", pad=8)
        ax.grid(alpha=0.35, lw=0.6)
        ax.set_title(name, fontsize=10, pad=22)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False, fontsize=8, ncol=2)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"{title}\n(radial axis from {rlim[0]:.2f} to {rlim[1]:.2f}, not from 0)" if rlim[0] > 0
                 else title)
    fig.tight_layout()
    out = save_figure(fig, path)
    plt.close(fig)
    return out


def hard_samples_figure(samples, data_dir: Path, path: Path, title: str = "", ncols: int = 3) -> Path:
    """A few hard samples: the image, true and predicted label, the post's text and its caption.

    ``samples``: rows with ``guid``, ``label``, ``pred``, ``p_true``, ``reason``, ``caption``."""
    from msa.data import load_image
    from msa.io import save_figure

    plt = pyplot()
    samples = list(samples)
    ncols = max(1, min(ncols, len(samples)))
    nrows = max(1, -(-len(samples) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 5.4 * nrows), squeeze=False)
    for ax, s in zip(axes.flat, samples):
        img = load_image(data_dir, s["guid"], draft_size=(320, 320)).image.copy()
        img.thumbnail((320, 320))
        ax.imshow(img)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{s['guid']}: true {s['label']}, predicted {s['pred']}\n(p true {s['p_true']:.2f}; "
                     f"{s['reason']})", fontsize=8)
        text = textwrap.shorten(" ".join(str(s.get("text", "")).split()), 150, placeholder=" ...")
        cap = textwrap.shorten(" ".join(str(s.get("caption", "")).split()), 200, placeholder=" ...")
        ax.set_xlabel("text: " + "\n".join(textwrap.wrap(text, 52)) + "\n\ncaption: "
                      + "\n".join(textwrap.wrap(cap, 52)), fontsize=7.5, loc="left")
    for ax in axes.flat[len(samples):]:
        ax.set_visible(False)
    fig.suptitle(title)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font")
        fig.tight_layout()
    out = save_figure(fig, path)
    plt.close(fig)
    return out
