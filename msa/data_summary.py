"""The data summary of phase 0 (phase 0b): the hand-off set read back, the counts of the analysis (label balance,
text lengths, encodings, image sizes, duplicates, audit), its four figures and its markdown report.
``phase0/data_analysis.py`` is the front end (flags, the up-to-date check, writing the files).

* :func:`load_phase0`: the inventory, audit, cleaned index and manifest of a work folder (one clear error when
  phase 0a has not run);
* :func:`analyse`: the counts, as written to summary.json;
* :func:`figures` (:func:`fig_labels`, :func:`fig_text`, :func:`fig_images`, :func:`fig_audit`), :func:`markdown`:
  what is drawn and written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from msa import cli
from msa.data import LABELS
from msa.io import save_figure

LABEL_COLORS = {"negative": "#d1495b", "neutral": "#8d99ae", "positive": "#2a9d8f"}


# ----------------------------------------------------------------------------------------------- inputs
def load_phase0(work_dir: Path) -> dict:
    """The hand-off set of ``work_dir``: ``inventory`` (numeric columns as int), ``audit``, ``cleaned``,
    ``manifest``."""
    need = ["data_inventory.csv", "data_audit.csv", "train_cleaned.txt", "phase0_manifest.json"]
    missing = [n for n in need if not (work_dir / n).is_file()]
    if missing:
        raise cli.UserError(f"{work_dir} lacks {', '.join(missing)}: run phase0/data_cleaner.py first "
                            f"(python phase0/data_cleaner.py --data-root DATA --work-dir {work_dir})")
    read = dict(dtype=str, keep_default_na=False)
    inv = pd.read_csv(work_dir / "data_inventory.csv", **read)
    for col in ("text_chars", "text_words", "image_width", "image_height", "image_bytes"):
        inv[col] = pd.to_numeric(inv[col], errors="coerce").fillna(0).astype(int)
    return {
        "inventory": inv,
        "audit": pd.read_csv(work_dir / "data_audit.csv", **read),
        "cleaned": pd.read_csv(work_dir / "train_cleaned.txt", **read),
        "manifest": json.loads((work_dir / "phase0_manifest.json").read_text(encoding="utf-8")),
    }


def analyse(d: dict, split_frame: pd.DataFrame) -> dict:
    """The counts of the analysis (summary.json less the split's name and sha256), on the split ``split_frame``."""
    inv, audit, cleaned = d["inventory"], d["audit"], d["cleaned"]
    train_inv = inv[inv["source"] == "train"]
    test_inv = inv[inv["source"] == "test"]
    merged = cleaned.merge(split_frame, on="guid", how="left")
    kept_inv = train_inv[train_inv["guid"].isin(cleaned["guid"])]
    sig = train_inv["phash"] + "|" + train_inv["text_sha256"]
    test_sig = test_inv["phash"] + "|" + test_inv["text_sha256"]
    return {
        "labels_raw": {lab: int((train_inv["label"] == lab).sum()) for lab in LABELS},
        "labels_cleaned": {lab: int((cleaned["tag"] == lab).sum()) for lab in LABELS},
        "labels_by_split": {part: {lab: int(((merged["split"] == part) & (merged["tag"] == lab)).sum())
                                   for lab in LABELS} for part in ("train", "val")},
        "text_words": {lab: kept_inv.loc[kept_inv["label"] == lab, "text_words"].describe()[["mean", "50%", "max"]]
                       .round(1).to_dict() for lab in LABELS},
        "encodings": {src: inv.loc[inv["source"] == src, "text_encoding"].replace("", "none").value_counts().to_dict()
                      for src in ("train", "test")},
        "image_formats": inv["image_format"].replace("", "unreadable").value_counts().to_dict(),
        "image_modes": inv["image_mode"].replace("", "unreadable").value_counts().to_dict(),
        "image_size_median": {"width": int(inv["image_width"].median()), "height": int(inv["image_height"].median())},
        "audit_reasons": audit.groupby(["reason", "action"]).size().rename("n").reset_index()
                              .to_dict(orient="records"),
        "test_posts_equal_to_a_labelled_post": int(test_sig[test_inv["phash"] != ""].isin(set(sig)).sum()),
        "n_inventory": {"train": int(len(train_inv)), "test": int(len(test_inv))},
    }


# ---------------------------------------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 110, "axes.spines.top": False, "axes.spines.right": False})
    return plt


def fig_labels(s: dict, out: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    groups = [("raw train.txt", s["labels_raw"]), ("cleaned", s["labels_cleaned"]),
              ("split: train", s["labels_by_split"]["train"]), ("split: val", s["labels_by_split"]["val"])]
    width = 0.2
    for j, lab in enumerate(LABELS):
        xs = [i + (j - 1) * width for i in range(2)]
        vals = [groups[0][1][lab], groups[1][1][lab]]
        bars = axes[0].bar(xs, vals, width, label=lab, color=LABEL_COLORS[lab])
        axes[0].bar_label(bars, fontsize=8)
        shares = [100 * g[1][lab] / max(1, sum(g[1].values())) for g in groups]
        bars = axes[1].bar([i + (j - 1) * width for i in range(4)], shares, width, color=LABEL_COLORS[lab])
        axes[1].bar_label(bars, fmt="%.1f", fontsize=7)
    axes[0].set_xticks(range(2), [g[0] for g in groups[:2]])
    axes[0].set_ylabel("posts")
    axes[0].set_title("Label counts before and after cleaning")
    axes[0].legend(frameon=False)
    axes[1].set_xticks(range(4), [g[0] for g in groups], fontsize=9)
    axes[1].set_ylabel("% of posts")
    axes[1].set_title("Label shares: stratification keeps them equal")
    fig.tight_layout()
    path = save_figure(fig, out / "label_distribution.png")
    plt.close(fig)
    return path


def fig_text(inv: pd.DataFrame, cleaned: pd.DataFrame, s: dict, out: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    kept = inv[(inv["source"] == "train") & inv["guid"].isin(cleaned["guid"])]
    hi = max(10, int(kept["text_words"].quantile(0.995)) + 1)
    bins = range(0, hi + 2, 2)
    for lab in LABELS:
        axes[0].hist(kept.loc[kept["label"] == lab, "text_words"].clip(upper=hi), bins=bins, alpha=0.55,
                     density=True, label=lab, color=LABEL_COLORS[lab])
    axes[0].set_xlabel("words per post (cleaned labelled posts)")
    axes[0].set_ylabel("density")
    axes[0].set_title("Text length by label")
    axes[0].legend(frameon=False)
    encs = sorted(set(s["encodings"]["train"]) | set(s["encodings"]["test"]),
                  key=lambda e: -s["encodings"]["train"].get(e, 0))
    x = range(len(encs))
    for off, src, color in ((-0.2, "train", "#457b9d"), (0.2, "test", "#e9c46a")):
        bars = axes[1].bar([i + off for i in x], [s["encodings"][src].get(e, 0) for e in encs], 0.4,
                           label=src, color=color)
        axes[1].bar_label(bars, fontsize=8)
    axes[1].set_xticks(list(x), encs, rotation=20)
    axes[1].set_ylabel("text files")
    axes[1].set_title("Encodings found (decode ladder)")
    axes[1].legend(frameon=False)
    fig.tight_layout()
    path = save_figure(fig, out / "text_length_and_encodings.png")
    plt.close(fig)
    return path


def fig_images(inv: pd.DataFrame, out: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    ok = inv[inv["image_width"] > 0]
    for src, color in (("train", "#457b9d"), ("test", "#e9c46a")):
        sub = ok[ok["source"] == src]
        axes[0].scatter(sub["image_width"], sub["image_height"], s=6, alpha=0.4, color=color, label=src)
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("width (px)")
    axes[0].set_ylabel("height (px)")
    axes[0].set_title("Image sizes")
    axes[0].legend(frameon=False, markerscale=3)
    combo = (inv["image_format"].replace("", "unreadable") + " " + inv["image_mode"]).str.strip().value_counts()
    bars = axes[1].barh(combo.index[::-1], combo.values[::-1], color="#6d597a", height=0.5)
    axes[1].bar_label(bars, fontsize=8)
    axes[1].set_xlabel("images")
    axes[1].set_title("Format and colour mode")
    fig.tight_layout()
    path = save_figure(fig, out / "image_sizes.png")
    plt.close(fig)
    return path


def fig_audit(audit: pd.DataFrame, out: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.45 * max(1, audit["reason"].nunique()) + 1.2)))
    if audit.empty:
        ax.text(0.5, 0.5, "no problem found", ha="center", va="center", fontsize=13)
        ax.set_axis_off()
    else:
        table = audit.groupby(["reason", "action"]).size().unstack(fill_value=0)
        table = table.loc[table.sum(axis=1).sort_values().index]
        table.plot.barh(stacked=True, ax=ax, colormap="tab10", width=0.7)
        for container in ax.containers:
            ax.bar_label(container, label_type="center", fontsize=8,
                         labels=[str(int(v)) if v else "" for v in container.datavalues])
        ax.set_xlabel("audit rows")
        ax.set_ylabel("")
        ax.legend(title="action", frameon=False)
    ax.set_title("Data audit: problems found and what was done")
    fig.tight_layout()
    path = save_figure(fig, out / "audit_reasons.png")
    plt.close(fig)
    return path


def figures(s: dict, d: dict, out: Path) -> list[Path]:
    """The four figures of the analysis ``s`` of the hand-off set ``d`` (see :func:`load_phase0`) in ``out``."""
    return [fig_labels(s, out), fig_text(d["inventory"], d["cleaned"], s, out), fig_images(d["inventory"], out),
            fig_audit(d["audit"], out)]


# ---------------------------------------------------------------------------------------------- report
def markdown(s: dict, manifest: dict, split_name: str, figures: list[Path], results_dir: Path) -> str:
    m = manifest["summary"]
    lines = ["# Phase 0: data audit and analysis", "",
             f"Data root: `{manifest['data_root']}`; split `{split_name}`; cleaned in {manifest['seconds']} s.", "",
             "| | negative | neutral | positive | total |", "|---|---:|---:|---:|---:|"]
    for name, counts in (("train.txt (raw)", s["labels_raw"]), ("cleaned", s["labels_cleaned"]),
                         ("split train", s["labels_by_split"]["train"]), ("split val", s["labels_by_split"]["val"])):
        total = sum(counts.values())
        cells = " | ".join(f"{counts[lab]} ({100 * counts[lab] / max(1, total):.1f}%)" for lab in LABELS)
        lines.append(f"| {name} | {cells} | {total} |")
    lines += ["", "## Removed or repaired", ""]
    if s["audit_reasons"]:
        lines += ["| reason | action | rows |", "|---|---|---:|"]
        lines += [f"| {r['reason']} | {r['action']} | {r['n']} |" for r in s["audit_reasons"]]
    else:
        lines.append("No problem found.")
    lines += ["", f"Near-duplicate rows removed (same image and text; conflicting groups included): "
                  f"{m['near_duplicates_removed']}. Posts that share an image with another kept post, and so are "
                  f"kept on the same side of every split: {m.get('image_groups_kept_together', 0)}. "
                  "Test posts identical (image "
                  f"pHash and text) to a labelled post: {s['test_posts_equal_to_a_labelled_post']}.", "",
              "## Texts and images", "",
              "| label | mean words | median | max |", "|---|---:|---:|---:|"]
    lines += [f"| {lab} | {v['mean']} | {v['50%']} | {v['max']} |" for lab, v in s["text_words"].items()]
    lines += ["", "Encodings: " + "; ".join(f"{src}: " + ", ".join(f"{k} {v}" for k, v in e.items())
                                           for src, e in s["encodings"].items()),
              "", "Image formats: " + ", ".join(f"{k} {v}" for k, v in s["image_formats"].items())
              + f"; median size {s['image_size_median']['width']}x{s['image_size_median']['height']} px.", "",
              "## Figures", ""]
    lines += [f"![{p.stem}]({Path(os.path.relpath(p.resolve(), results_dir.resolve())).as_posix()})"
              for p in figures]
    return "\n".join(lines) + "\n"
