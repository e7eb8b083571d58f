"""Figures shared by the phases (matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

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
