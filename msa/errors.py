"""Where a classifier's errors are: per-class precision / recall / F1, the confusion matrix as counts and as shares
of each true class, accuracy on slices of the posts (e.g. the text's lexicon polarity, its length), and the most
confident mistakes of every (true, predicted) pair with their texts, so that a reader can look at them.

``final/run_final.py`` writes this for the recipe's held-out cross-validation predictions
(``final/results/errors.md`` and ``errors.csv``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from msa.metrics import _label_indices, classification_metrics


def vader_slice(compound) -> np.ndarray:
    """VADER's usual reading of its compound score: >= 0.05 positive, <= -0.05 negative, else neutral; NaN: none."""
    c = np.asarray(compound, dtype=float)
    return np.where(np.isnan(c), "no text", np.where(c >= 0.05, "positive", np.where(c <= -0.05, "negative",
                                                                                        "neutral")))


def length_slice(texts: Sequence[str], edges: Sequence[int] = (5, 15)) -> np.ndarray:
    """Words in each text, binned: ``<= edges[0]``, up to ``edges[1]``, more."""
    n = np.array([len(t.split()) for t in texts])
    lo, hi = edges
    return np.where(n <= lo, f"<= {lo} words", np.where(n <= hi, f"{lo + 1}-{hi} words", f"> {hi} words"))


def error_analysis(y_true, proba, labels: Sequence[str], guids: Sequence[str] | None = None,
                   texts: Sequence[str] | None = None, slices: Mapping[str, Sequence[str]] | None = None,
                   examples: int = 5) -> dict:
    """Per-class scores, confusion counts and row shares, per-slice accuracy, and the ``examples`` most confident
    mistakes of each (true, predicted) pair (by the predicted class's probability).

    ``y_true``: class indices or label strings; ``proba``: (N, C) class probabilities (the prediction is their
    arg-max); ``slices``: name -> one group label per post."""
    labels = list(labels)
    p = np.asarray(proba, dtype=float)
    y = _label_indices(y_true, labels, "y_true")
    if p.ndim != 2 or p.shape != (len(y), len(labels)):
        raise ValueError(f"proba must be (N={len(y)}, C={len(labels)}), got shape {p.shape}")
    pred = p.argmax(1)
    n = len(y)
    guids = [str(g) for g in guids] if guids is not None else [str(i) for i in range(n)]
    texts = list(texts) if texts is not None else [""] * n
    if len(guids) != n or len(texts) != n:
        raise ValueError(f"guids ({len(guids)}) and texts ({len(texts)}) must have one entry per post ({n})")
    m = classification_metrics(y, pred, p, labels)
    cm = np.asarray(m["confusion_matrix"])
    per_class = []
    for j, lab in enumerate(labels):
        tp, support, predicted = cm[j, j], cm[j].sum(), cm[:, j].sum()
        per_class.append({"class": lab, "support": int(support), "predicted": int(predicted),
                          "precision": float(tp / predicted) if predicted else 0.0,
                          "recall": float(tp / support) if support else 0.0, "f1": m[f"f1_{lab}"]})
    shares = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    slice_rows = []
    for name, groups in (slices or {}).items():
        groups = np.asarray(groups)
        if len(groups) != n:
            raise ValueError(f"slice {name!r} has {len(groups)} entries for {n} posts")
        for g in sorted(set(groups.tolist())):
            sel = groups == g
            row = {"slice": name, "group": g, "posts": int(sel.sum()), "accuracy": float((pred[sel] == y[sel]).mean())}
            for j, lab in enumerate(labels):
                row[f"true_{lab}"] = int((y[sel] == j).sum())
                row[f"pred_{lab}"] = int((pred[sel] == j).sum())
            slice_rows.append(row)
    wrong = np.flatnonzero(pred != y)
    frame = pd.DataFrame({"guid": [guids[i] for i in wrong], "label": [labels[y[i]] for i in wrong],
                          "pred": [labels[pred[i]] for i in wrong], "confidence": p[wrong, pred[wrong]].round(4),
                          **{f"p_{lab}": p[wrong, j].round(4) for j, lab in enumerate(labels)},
                          **{name: np.asarray(g)[wrong] for name, g in (slices or {}).items()},
                          "text": [texts[i] for i in wrong]})
    frame = frame.sort_values(["label", "pred", "confidence"], ascending=[True, True, False], kind="stable")
    pairs = {}
    for (t, q), g in frame.groupby(["label", "pred"], sort=True):
        pairs[f"{t}->{q}"] = g.head(examples).to_dict(orient="records")
    return {"n": n, "errors": int(len(wrong)), "metrics": {k: m[k] for k in ("accuracy", "weighted_f1", "macro_f1")},
            "labels": labels, "per_class": per_class, "confusion": cm.tolist(), "shares": shares.round(4).tolist(),
            "slices": slice_rows, "examples": pairs, "table": frame.reset_index(drop=True)}


def _cell(text: str, width: int = 140) -> str:
    text = " ".join(str(text).split())
    text = text if len(text) <= width else text[: width - 1] + "…"
    return text.replace("|", "\\|").replace("<", "&lt;") or "(empty)"


def error_markdown(a: dict, title: str = "Where the errors are") -> str:
    """The analysis of :func:`error_analysis` as a Markdown section."""
    labels = a["labels"]
    m = a["metrics"]
    lines = [f"# {title}", "", f"{a['errors']} of {a['n']} posts misclassified (accuracy {m['accuracy']:.3f}, "
             f"weighted F1 {m['weighted_f1']:.3f}).", "", "## Per class", "",
             "| class | posts | predicted as it | precision | recall | F1 |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['class']} | {r['support']} | {r['predicted']} | {r['precision']:.3f} | {r['recall']:.3f} | "
              f"{r['f1']:.3f} |" for r in a["per_class"]]
    lines += ["", "## Confusion (rows: true class; count and share of the row)", "",
              "| true \\ predicted | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    lines += [f"| {t} | " + " | ".join(f"{a['confusion'][i][j]} ({a['shares'][i][j]:.0%})" for j in range(len(labels)))
              + " |" for i, t in enumerate(labels)]
    if a["slices"]:
        lines += ["", "## Accuracy on slices of the posts", "",
                  "| slice | group | posts | accuracy | true " + " / ".join(labels) + " | predicted "
                  + " / ".join(labels) + " |", "|---|---|---:|---:|---|---|"]
        lines += [f"| {r['slice']} | {r['group']} | {r['posts']} | {r['accuracy']:.3f} | "
                  + " / ".join(str(r[f"true_{lab}"]) for lab in labels) + " | "
                  + " / ".join(str(r[f"pred_{lab}"]) for lab in labels) + " |" for r in a["slices"]]
    lines += ["", "## The most confident mistakes of each kind", ""]
    for pair, rows in a["examples"].items():
        t, q = pair.split("->")
        count = a["confusion"][labels.index(t)][labels.index(q)]
        lines += [f"### true {t}, predicted {q} ({count} posts)", "", "| guid | p(predicted) | text |",
                  "|---|---:|---|"]
        lines += [f"| {r['guid']} | {r['confidence']:.2f} | {_cell(r['text'])} |" for r in rows]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
