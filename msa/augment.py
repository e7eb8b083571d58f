"""Hard-sample mining and caption augmentation of cached features (phase 4; reusable by later recipes).

:func:`mine_hard` marks the training rows a model gets wrong, or true-neutral rows it gives a low neutral
probability, and samples some of them (seeded). :func:`augment_features` adds, for each captioned row, two new
feature rows next to the originals: ``{guid}_vlm`` (same image, the caption as its text) and ``{guid}+caption``
(same image, the post's text with the caption appended). :func:`train_rows` then builds the training rows of a
mode; validation rows are never touched.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from msa.data import LABEL2ID, LABELS, read_text
from msa.features import DEFAULT_CACHE_DIR, FeatureSet, text_features_for

log = logging.getLogger(__name__)

#: how captions enter the training split: none (the fine-tuning control), an extra sample per hard post,
#: the caption appended to the hard post's text, or both
MODES = ("none", "extra", "append", "both")
VLM_SUFFIX = "_vlm"
APPEND_SUFFIX = "+caption"


def mine_hard(proba: np.ndarray, labels: np.ndarray, rows: Sequence[int], neutral_threshold: float = 0.5,
              sample_ratio: float = 1.0, max_hard: int | None = None, seed: int = 0) -> pd.DataFrame:
    """Hard training samples among ``rows``.

    ``proba[i]`` and ``labels[i]`` belong to ``rows[i]``. A row is hard when its prediction is wrong, or when it
    is truly neutral and its neutral probability is below ``neutral_threshold``. Of the hard rows a seeded random
    ``sample_ratio`` share is selected, at most ``max_hard`` (None/0: no cap).

    Returns one line per hard row (hardest first: lowest probability of the true class) with columns ``row``,
    ``label``, ``pred``, ``p_true``, ``p_neutral``, ``reason`` and ``selected``."""
    if not 0.0 < sample_ratio <= 1.0:
        raise ValueError(f"sample_ratio must be in (0, 1], got {sample_ratio}")
    proba = np.asarray(proba, dtype=float)
    labels = np.asarray(labels, dtype=int)
    rows = np.asarray(rows, dtype=int)
    neutral = LABEL2ID["neutral"]
    pred = proba.argmax(1)
    p_true = proba[np.arange(len(labels)), labels]
    wrong = pred != labels
    unsure = (labels == neutral) & (proba[:, neutral] < neutral_threshold)
    hard = np.flatnonzero(wrong | unsure)
    reason = np.where(wrong[hard] & unsure[hard], "misclassified, low-confidence neutral",
                      np.where(wrong[hard], "misclassified", "low-confidence neutral"))
    frame = pd.DataFrame({"row": rows[hard], "label": [LABELS[k] for k in labels[hard]],
                          "pred": [LABELS[k] for k in pred[hard]], "p_true": p_true[hard].round(4),
                          "p_neutral": proba[hard, neutral].round(4), "reason": reason})
    n_keep = int(round(sample_ratio * len(frame)))
    if max_hard:
        n_keep = min(n_keep, int(max_hard))
    keep = np.random.default_rng(seed).permutation(len(frame))[:n_keep]
    frame["selected"] = False
    frame.loc[frame.index[keep], "selected"] = True
    return frame.sort_values(["p_true", "row"]).reset_index(drop=True)


@dataclass
class Augmented:
    """``fs`` and ``labels`` hold the original rows first, then the new ones; ``extra_row`` / ``append_row`` map
    an original row to its caption-only / caption-appended row; ``texts`` the raw text of every new row."""

    fs: FeatureSet
    labels: np.ndarray
    extra_row: dict[int, int] = field(default_factory=dict)
    append_row: dict[int, int] = field(default_factory=dict)
    texts: dict[int, str] = field(default_factory=dict)


def appended_text(data_dir: Path, guid: str, caption: str) -> str:
    """The post's raw text, then the caption (separated by a space); just the caption when there is no text."""
    res = read_text(data_dir, guid)
    original = res.raw.strip() if res.ok and res.raw else ""
    return f"{original} {caption}".strip()


def augment_features(fs: FeatureSet, labels: np.ndarray, captions: dict[int, str], data_dir: str | Path,
                     text_backbone, cache_dir: str | Path = DEFAULT_CACHE_DIR, batch_size: int = 32,
                     progress: bool = True) -> Augmented:
    """New rows for every ``captions`` entry (original row -> caption); text features are computed (and cached)
    with the same normalisation as post texts, image features (and any token sequences) are the original row's."""
    data_dir = Path(data_dir)
    rows = sorted(captions)
    if not rows:
        return Augmented(fs, np.asarray(labels))
    cap_texts = [captions[r] for r in rows]
    app_texts = [appended_text(data_dir, fs.guids[r], captions[r]) for r in rows]
    want_tokens = "text" in fs.tokens
    pooled, toks = text_features_for(cap_texts + app_texts, text_backbone, cache_dir, tokens=want_tokens,
                                     batch_size=batch_size, progress=progress)
    n, k = len(fs.guids), len(rows)
    new_guids = [fs.guids[r] + VLM_SUFFIX for r in rows] + [fs.guids[r] + APPEND_SUFFIX for r in rows]
    src = rows + rows  # the original row each new row copies its other modalities from
    out = FeatureSet(guids=list(fs.guids) + new_guids, backbones=dict(fs.backbones), stats=dict(fs.stats))
    for m, mat in fs.pooled.items():
        extra = pooled.to(mat.dtype) if m == "text" else mat[src]
        out.pooled[m] = torch.cat([mat, extra])
    for m, seqs in fs.tokens.items():
        out.tokens[m] = list(seqs) + (list(toks) if m == "text" else [seqs[r] for r in src])
    labels = np.asarray(labels)
    aug = Augmented(out, np.concatenate([labels, labels[src]]))
    for j, r in enumerate(rows):
        aug.extra_row[r] = n + j
        aug.append_row[r] = n + k + j
        aug.texts[n + j] = cap_texts[j]
        aug.texts[n + k + j] = app_texts[j]
    return aug


def train_rows(mode: str, base: Sequence[int], hard: Sequence[int], aug: Augmented) -> list[int]:
    """Training rows of ``mode`` given the original training rows ``base`` and the selected ``hard`` rows
    (hard rows without a caption stay as they are)."""
    if mode not in MODES:
        raise ValueError(f"unknown augmentation mode {mode!r}; choose from {', '.join(MODES)}")
    hard = [r for r in hard if r in aug.extra_row]
    out = list(base)
    if mode in ("append", "both"):
        swap = {r: aug.append_row[r] for r in hard}
        out = [swap.get(r, r) for r in out]
    if mode in ("extra", "both"):
        out += [aug.extra_row[r] for r in hard]
    return out


def index_frame(rows: Sequence[int], aug: Augmented, data_dir: str | Path) -> pd.DataFrame:
    """The training index of a mode as a table: guid, tag, what its text is, the image it uses, the text."""
    n = len(aug.fs.guids) - 2 * len(aug.extra_row)
    data_dir = Path(data_dir)
    out = []
    for r in rows:
        guid = aug.fs.guids[r]
        if r < n:
            res = read_text(data_dir, guid)
            kind, image, text = "original", guid, (res.raw if res.ok else "")
        elif guid.endswith(VLM_SUFFIX):
            kind, image, text = "caption (extra sample)", guid[: -len(VLM_SUFFIX)], aug.texts[r]
        else:
            kind, image, text = "text + caption", guid[: -len(APPEND_SUFFIX)], aug.texts[r]
        out.append({"guid": guid, "tag": LABELS[int(aug.labels[r])], "text_source": kind, "image_guid": image,
                    "text": " ".join(str(text).split())})
    return pd.DataFrame(out)
