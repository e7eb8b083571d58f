"""The linear-probe stage (phase 6): the reference model's rows, the frozen embeddings (CLIP, else the default
backbones' features), the probe and zero-shot rows, the summary table, its text and the comparison figure.
``phase6/run_phase6.py`` is the front end (flags, the up-to-date check, writing the files); CLIP itself is in
:mod:`msa.clip`, the probes in :mod:`msa.probes`.

* :func:`parse_grid`, :func:`resolve_device`: the settings checked before any work;
* :func:`find_reference` / :func:`reference_files`: the reference rows (see --reference) and the files they read;
* :func:`embeddings`: the probe feature sets and zero-shot probabilities (:class:`Embeddings`), from
  :func:`clip_features` or, without CLIP, :func:`fallback_features`;
* :func:`probe_rows`: one row (and its validation predictions) per probe and zero-shot prompt;
* :func:`summary_table`, :func:`titles`, :func:`intro`, :func:`best_note`, :func:`markdown`, :func:`summary_json`,
  :func:`comparison_figure`: what is written.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from msa import cli

log = logging.getLogger("phase6")  # the stage's messages keep the name they have always had
REFERENCE_PHASES = ("phase4", "phase3", "phase1")
FALLBACK_FEATURES = "frozen default backbones (MiniLM + EfficientNet-Lite0), not CLIP"
FALLBACK_BACKBONES = ("minilm", "efficientnet_lite0")
TABLE_METRICS = (("accuracy", "accuracy"), ("weighted_f1", "weighted F1"), ("macro_f1", "macro F1"),
                 ("f1_neutral", "neutral F1"), ("ece", "ECE"))
FIGURE_METRICS = (("weighted_f1", "weighted F1"), ("f1_neutral", "neutral F1"), ("accuracy", "accuracy"))
PROBE_SETS = ("image", "text", "image+text")
KIND_COLORS = {"linear probe": "#4c78a8", "zero-shot": "#9d9d9d", "reference": "#f58518"}


# ------------------------------------------------------------------------------------------------ inputs
def parse_grid(text: str) -> list[float]:
    try:
        cs = [float(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise cli.UserError(f"--c-grid: {text!r} is not a comma-separated list of numbers") from None
    if not cs or any(not c > 0 for c in cs):
        raise cli.UserError(f"--c-grid needs positive numbers, got {text!r}")
    return sorted(set(cs))


def resolve_device(device: str) -> str:
    """--device as a device name (auto: cuda when available); cuda without a CUDA device is an error."""
    import torch

    device = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise cli.UserError("--device cuda: no CUDA device is available")
    return device


def _rel(path: Path) -> str:
    path = Path(path).resolve()
    try:
        return str(path.relative_to(cli.REPO_ROOT))
    except ValueError:
        return str(path)


def _metric_values(d: dict) -> dict:
    return {k: float(d[k]) for k, _ in TABLE_METRICS if isinstance(d.get(k), (int, float))}


def _read_json(path: Path) -> dict:
    """A JSON object from ``path``; ``{}`` when it is unreadable (a list or a value counts as unreadable by the
    callers, who check the type)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _reference_config(cfg_path: Path) -> tuple[dict, str]:
    """The reference run's split record and a description of its features, from its config.json."""
    cfg = _read_json(cfg_path) if cfg_path.is_file() else {}
    cfg = cfg if isinstance(cfg, dict) else {}
    split_info = cfg.get("split") if isinstance(cfg.get("split"), dict) else {}
    backbones = cfg.get("backbones") if isinstance(cfg.get("backbones"), dict) else {}
    names = [Path(str(b.get("name"))).name for b in backbones.values() if isinstance(b, dict) and b.get("name")]
    features = (f"'{cfg.get('fusion', '?')}' fusion head trained on frozen {' + '.join(names)} features" if names
                else "trained head (see its config.json)")
    return split_info, features


def _same_split(split_info: dict, split, source: str, cfg_path: Path, notes: list[str]) -> bool | None:
    """Whether the reference was measured on ``split`` (None: unknown); adds a note when not or unknown."""
    if not split_info.get("sha256"):
        notes.append(f"The reference's split could not be checked ({_rel(cfg_path)} has no split sha256).")
        return None
    same_split = split_info["sha256"] == split.sha256
    if not same_split:
        msg = (f"the reference {source} was measured on split {split_info.get('name')!r} "
               f"(sha256 {str(split_info['sha256'])[:12]}), phase 6 on {split.name!r} "
               f"(sha256 {split.sha256[:12]}): its numbers are not on the same validation posts")
        log.warning(msg)
        notes.append(f"**Caution**: {msg}.")
    return same_split


def _mean_row(best_json: Path, first: dict, who: str, label_phase: str, other: str, n_val) -> dict | None:
    """The reference's best method's mean ± std over seeds, from best.json's ``method_mean`` (None: none)."""
    best = _read_json(best_json)
    mm = best.get("method_mean") if isinstance(best, dict) else None
    if not (isinstance(mm, dict) and all(isinstance(mm.get(k), dict) for k in ("weighted_f1", "f1_neutral",
                                                                              "accuracy"))):
        return None
    n = len(best.get("seeds") or best.get("seed_runs") or [])
    seeds = f"{n} seeds" if n else "seeds"
    name = best.get("method") or best.get("mode")
    what = f"best method '{name}'" if name else "best method"
    row = {"id": "reference_mean", "phase": first["phase"],
           "label": f"{who}, {what} mean ± std over {seeds} ({_rel(best_json)})",
           "short": f"{label_phase} mean ± std{other}",
           "kind": "reference", "features": first["features"], "source": _rel(best_json),
           "same_split": first["same_split"], "n_val": n_val}
    for k, _ in TABLE_METRICS:
        if isinstance(mm.get(k), dict):
            row[k] = float(mm[k]["mean"])
            row[f"{k}_std"] = float(mm[k]["std"])
    return row


def read_reference(metrics_path: Path, phase: str | None, split) -> tuple[list[dict], list[str]]:
    """Reference rows from a run folder's metrics.json (+ best.json's method mean ± std) and notes about it."""
    notes: list[str] = []
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        if not isinstance(metrics, dict) or not {"weighted_f1", "f1_neutral", "accuracy"} <= set(metrics):
            raise ValueError("it lacks weighted_f1 / f1_neutral / accuracy")
    except (OSError, ValueError) as exc:
        log.warning("reference %s is unreadable (%s): the table has no reference row", metrics_path, exc)
        return [], [f"No reference row: {_rel(metrics_path)} is unreadable ({exc})."]
    who = f"phase-{phase[-1]} model" if phase else "reference model"
    if phase and phase != "phase4":
        who += " (phase 4 not run)" if phase == "phase3" else " (phases 4 and 3 not run)"
    source = _rel(metrics_path)
    run = metrics_path.parent
    split_info, features = _reference_config(run / "config.json")
    same_split = _same_split(split_info, split, source, run / "config.json", notes)
    label_phase = f"phase {phase[-1]}" if phase else "reference"
    other = " (other split!)" if same_split is False else ""
    rows = [{"id": "reference", "phase": phase, "label": f"{who}, best run ({source})",
             "short": f"{label_phase} best run{other}",
             "kind": "reference", "features": features,
             "source": source, "same_split": same_split, "n_val": metrics.get("n"), **_metric_values(metrics)}]
    best_json = run.parent / "best.json" if run.name == "best" else None
    if best_json is not None and best_json.is_file():
        mean = _mean_row(best_json, rows[0], who, label_phase, other, metrics.get("n"))
        if mean is not None:
            rows.append(mean)
    return rows, notes


def reference_files(spec: str, root: Path | None = None) -> list[Path]:
    """Every file --reference may read (for the up-to-date check: a reference appearing or changing reruns)."""
    root = Path(root or cli.REPO_ROOT)
    if spec == "none":
        return []
    if spec == "auto":
        runs = [root / phase / "results" / "best" for phase in REFERENCE_PHASES]
    else:
        path = Path(spec)
        runs = [path if path.is_dir() else path.parent]
    return [f for run in runs for f in (run / "metrics.json", run / "config.json", run.parent / "best.json")]


def find_reference(spec: str, split, root: Path | None = None) -> tuple[list[dict], list[str]]:
    """Rows of the reference model (see --reference) and notes for the table."""
    root = Path(root or cli.REPO_ROOT)
    if spec == "none":
        return [], ["No reference row (--reference none)."]
    if spec == "auto":
        tried = []
        for phase in REFERENCE_PHASES:
            path = root / phase / "results" / "best" / "metrics.json"
            tried.append(_rel(path))
            if path.is_file():
                return read_reference(path, phase, split)
        log.warning("no reference model: none of %s exists; the table has no reference row", ", ".join(tried))
        return [], [f"No reference row: none of {', '.join(f'`{t}`' for t in tried)} exists "
                    "(run phase 4, 3 or 1 first)."]
    path = Path(spec)
    if path.is_dir():
        path = path / "metrics.json"
    if not path.is_file():
        raise cli.UserError(f"--reference {spec}: {path} not found (give a run folder holding metrics.json, "
                            "a metrics.json, 'auto' or 'none')")
    return read_reference(path, None, split)


# ------------------------------------------------------------------------------------------- features
def clip_features(args, data, data_dir: Path, device: str):
    """Embeddings and zero-shot probabilities from CLIP: (probe feature sets, zero-shot probas, info, stats)."""
    import torch

    from msa import clip as cc
    from msa.data import LABELS
    from msa.features import model_text

    clip = cc.load_clip(args.clip_model, device)
    img, s_img = cc.image_embeddings(clip, data_dir, data.guids, args.cache_dir, args.batch_size)
    texts = [model_text(data_dir, g) for g in data.guids]
    txt, s_txt = cc.text_embeddings(clip, texts, args.cache_dir, args.batch_size)
    classes, s_prompt = cc.class_embeddings(clip, LABELS, args.cache_dir, batch_size=args.batch_size)
    stats = {"image": s_img, "text": s_txt, "prompts": s_prompt}
    for name, s in stats.items():
        log.info("CLIP %s embeddings: %d of %d computed, rest from cache %s", name, s["computed"], s["total"],
                 s["cache"])
    sets = {"image": img.numpy(), "text": txt.numpy(), "image+text": torch.cat([img, txt], 1).numpy()}
    scale = clip.logit_scale
    val = data.val_idx
    zero = {"image": cc.zero_shot_proba(img[val], classes=classes, logit_scale=scale),
            "text": cc.zero_shot_proba(txt[val], classes=classes, logit_scale=scale),
            "image+text": cc.zero_shot_proba(img[val], txt[val], classes=classes, logit_scale=scale)}
    name = clip.folder.name
    info = {"mode": "clip", "features": f"CLIP {name} (projected embeddings, L2-normalised)", "clip": clip.info(),
            "zero_shot": {"templates": list(cc.ZERO_SHOT_TEMPLATES),
                          "prompts": dict(zip(LABELS, cc.prompts(LABELS))), "logit_scale": scale,
                          "image+text": "softmax of the scale x mean of the image and the text cosine similarities"}}
    labels = {"image": f"CLIP linear probe, image ({name})", "text": f"CLIP linear probe, text ({name})",
              "image+text": f"CLIP linear probe, image+text ({name})"}
    return sets, zero, info, stats, labels


def fallback_features(args, data, data_dir: Path):
    """The same probe feature sets from the default backbones' cached features (never called CLIP)."""
    import torch

    from msa.experiment import labelled_features, load_backbones

    tb, ib = load_backbones(*FALLBACK_BACKBONES, cache_dir=args.cache_dir)
    fs = labelled_features(data_dir, data.guids, tb, ib, args.cache_dir, batch_size=args.batch_size)
    img = torch.nn.functional.normalize(fs.pooled["image"].float(), dim=-1)
    txt = torch.nn.functional.normalize(fs.pooled["text"].float(), dim=-1)
    sets = {"image": img.numpy(), "text": txt.numpy(), "image+text": torch.cat([img, txt], 1).numpy()}
    stats = {m: {**s, "cache": str(args.cache_dir)} for m, s in fs.stats.items()}
    info = {"mode": "fallback", "features": FALLBACK_FEATURES, "backbones": fs.backbones}
    labels = {"image": "linear probe, image (EfficientNet-Lite0)", "text": "linear probe, text (MiniLM)",
              "image+text": "linear probe, image+text (MiniLM + EfficientNet-Lite0)"}
    return sets, {}, info, stats, labels


@dataclass
class Embeddings:
    """What the probes and zero-shot rows run on: feature sets by name (PROBE_SETS), zero-shot probabilities of
    the validation rows by name (none without CLIP), a description (``info``), cache statistics, the row label
    of each feature set, and the warning given when CLIP was missing (else None)."""
    sets: dict
    zero: dict
    info: dict
    stats: dict
    labels: dict
    warning: str | None


def embeddings(args, data, data_dir: Path, device: str) -> Embeddings:
    """CLIP's embeddings, or (the CLIP folder missing or incomplete: a warning) the default backbones'."""
    from msa.clip import clip_problem, how_to_get

    problem = clip_problem(args.clip_model)
    warning = None
    if problem:
        warning = (f"{problem}; {how_to_get(args.clip_model)}. Running the same linear probes instead on the "
                   f"{FALLBACK_FEATURES}; no zero-shot rows.")
        log.warning(warning)
        return Embeddings(*fallback_features(args, data, data_dir), warning)
    return Embeddings(*clip_features(args, data, data_dir, device), warning)


# ----------------------------------------------------------------------------------------------- rows
def probe_settings(args, cs: list[float]) -> dict:
    """The keywords of :func:`msa.probes.evaluate_probe` (as recorded in summary.json)."""
    return {"cs": cs, "folds": args.cv_folds, "seed": args.seed, "cv_metric": args.cv_metric,
            "standardize": not args.no_standardize,
            "class_weight": None if args.class_weight == "none" else args.class_weight}


def _row(row_id: str, label: str, short: str, kind: str, features: str, n_val: int, metrics: dict,
         extra: dict) -> dict:
    return {"id": row_id, "label": label, "short": short, "kind": kind, "features": features,
            "source": "phase 6", "n_val": n_val, **_metric_values(metrics),
            **{k: metrics[k] for k in ("f1_negative", "f1_positive") if k in metrics}, **extra,
            "confusion_matrix": metrics.get("confusion_matrix")}


def _predictions(row_id: str, val_guids: list[str], y_val, proba):
    import pandas as pd

    from msa.data import LABELS

    frame = pd.DataFrame({"row": row_id, "guid": val_guids, "label": [LABELS[k] for k in y_val],
                          "pred": [LABELS[k] for k in proba.argmax(1)]})
    for k, lab in enumerate(LABELS):
        frame[f"p_{lab}"] = proba[:, k].round(6)
    return frame


def _probe(emb: Embeddings, name: str, data, probe_kw: dict):
    """One linear probe on the feature set ``name``: (its row's extra entries, probabilities, metrics)."""
    from msa.data import LABELS
    from msa.probes import evaluate_probe

    cs = probe_kw["cs"]
    t = time.time()
    fit, proba, metrics = evaluate_probe(emb.sets[name], data.labels, data.train_idx, data.val_idx,
                                         label_names=LABELS, **probe_kw)
    log.info("probe %s: C %g by %d-fold CV on %d training posts (%s %.4f), validation weighted F1 %.4f, "
             "neutral F1 %.4f (%.1f s)", name, fit.C, fit.folds, fit.n_train, fit.cv_metric,
             max(r["mean"] for r in fit.cv), metrics["weighted_f1"], metrics["f1_neutral"], time.time() - t)
    if len(cs) > 2 and fit.C in (cs[0], cs[-1]):
        log.warning("probe %s: the chosen C %g is at the edge of --c-grid; a wider grid may fit better", name,
                    fit.C)
    return {"C": fit.C, "dim": int(emb.sets[name].shape[1]), "cv": fit.record()}, proba, metrics


def probe_rows(emb: Embeddings, data, probe_kw: dict) -> tuple[list[dict], list]:
    """A row per linear probe (PROBE_SETS) and per zero-shot prompt set, and their validation predictions
    (one frame per row)."""
    from msa.data import LABELS
    from msa.metrics import classification_metrics

    val_guids = [data.guids[i] for i in data.val_idx]
    y_val = data.labels[data.val_idx]
    rows, preds = [], []
    tag = "" if emb.info["mode"] == "clip" else " (not CLIP)"
    for name in PROBE_SETS:
        extra, proba, metrics = _probe(emb, name, data, probe_kw)
        rows.append(_row(f"probe_{name}", emb.labels[name], f"probe {name}{tag}", "linear probe",
                         emb.info["features"], len(val_guids), metrics, extra))
        preds.append(_predictions(f"probe_{name}", val_guids, y_val, proba))
    for name, proba in emb.zero.items():
        metrics = classification_metrics(y_val, proba.argmax(1), proba, labels=LABELS)
        rows.append(_row(f"zero_shot_{name}", f"CLIP zero-shot, {name} ({Path(emb.info['clip']['folder']).name})",
                         f"zero-shot {name}", "zero-shot", emb.info["features"], len(val_guids), metrics, {}))
        preds.append(_predictions(f"zero_shot_{name}", val_guids, y_val, proba))
    return rows, preds


# ----------------------------------------------------------------------------------------------- tables
def summary_table(rows: list[dict]):
    """summary.csv: every row less its CV record and confusion matrix."""
    import pandas as pd

    return pd.DataFrame([{k: v for k, v in r.items() if k not in ("cv", "confusion_matrix")} for r in rows])


def titles(emb: Embeddings, ref_rows: list[dict], data) -> tuple[str, str]:
    """The markdown header and the figure's title."""
    what = ("CLIP linear probes" if emb.info["mode"] == "clip"
            else "linear probes on the default backbones (CLIP missing)")
    ref_phase = ref_rows[0]["phase"] if ref_rows else None
    versus = (f" vs the phase-{ref_phase[-1]} model" if ref_phase else " vs the reference model") if ref_rows else ""
    header = (f"# Phase 6: {what}{versus} (split `{data.split.name}`, {len(data.val_idx)} validation posts)")
    title = (f"Phase 6: {what}{versus} (validation split '{data.split.name}', "
             f"{len(data.val_idx)} posts)")
    return header, title


def intro(emb: Embeddings, args, cs: list[float], n_train: int) -> list[str]:
    """The paragraphs above the table: the CLIP warning, how the probes were fit, how zero-shot works."""
    lines = []
    if emb.warning:
        lines += [f"> **CLIP not available**: {emb.warning}", ""]
    std_note = "standardised with the training rows' statistics, " if not args.no_standardize else ""
    cw = ", class weights balanced" if args.class_weight == "balanced" else ""
    grid = ", ".join(f"{c:g}" for c in cs)
    lines += [f"Features: {emb.info['features']}. Probes: multinomial logistic regression on the L2-normalised "
              f"embeddings (image+text: both concatenated), {std_note}C chosen from {{{grid}}} "
              f"by stratified {args.cv_folds}-fold cross-validation on the {n_train} training posts only "
              f"({args.cv_metric}, folds seeded with {args.seed}{cw}), refit on them and evaluated once on the "
              f"validation split. Cells are single deterministic fits unless they show ± std over seeds."]
    if emb.zero:
        zs = emb.info["zero_shot"]
        lines += ["", "Zero-shot rows use no training data: softmax of CLIP's logit scale x cosine similarity to the "
                  f"mean embedding of {len(zs['templates'])} prompts per class (e.g. "
                  f"\"{zs['templates'][0].format('neutral')}\"); image+text averages the image and "
                  "text similarities."]
    return lines


def best_note(rows: list[dict], ref_rows: list[dict]) -> str:
    """The best phase-6 row by validation weighted F1, and its difference to the reference on the same split."""
    own = [r for r in rows if r["kind"] != "reference"]
    best = max(own, key=lambda r: r["weighted_f1"])
    return (f"Best phase-6 row by validation weighted F1: {best['label']} ({best['weighted_f1']:.4f}, neutral F1 "
            f"{best['f1_neutral']:.4f})" + (
                f"; the reference's best run: {ref_rows[0]['weighted_f1']:.4f} (Δ weighted F1 "
                f"{best['weighted_f1'] - ref_rows[0]['weighted_f1']:+.4f}, Δ neutral F1 "
                f"{best['f1_neutral'] - ref_rows[0]['f1_neutral']:+.4f})" if ref_rows and ref_rows[0]["same_split"]
                is not False else "") + ".")


def _cell(r: dict, key: str) -> str:
    v = r.get(key)
    if not isinstance(v, (int, float)) or v != v:
        return "-"
    std = r.get(f"{key}_std")
    return f"{v:.4f} ± {std:.4f}" if isinstance(std, (int, float)) and std == std else f"{v:.4f}"


def markdown(rows: list[dict], header: str, intro: list[str], notes: list[str]) -> str:
    lines = [header, ""] + intro + ["",
             "| row | features | C (CV on train) | " + " | ".join(n for _, n in TABLE_METRICS) + " |",
             "|---|---|---:|" + "---:|" * len(TABLE_METRICS)]
    for r in rows:
        c = f"{r['C']:g}" if isinstance(r.get("C"), float) else "-"
        lines.append(f"| {r['label']} | {r['features']} | {c} | "
                     + " | ".join(_cell(r, k) for k, _ in TABLE_METRICS) + " |")
    if notes:
        lines += [""] + notes
    return "\n".join(lines) + "\n"


def summary_json(emb: Embeddings, data, args, probe_kw: dict, rows: list[dict], notes: list[str],
                 seconds: float) -> dict:
    return {
        "mode": emb.info["mode"], "warning": emb.warning, "features": emb.info, "split": data.split.name,
        "split_path": str(data.split.path), "split_sha256": data.split.sha256, "n_train": len(data.train_idx),
        "n_val": len(data.val_idx), "probe": {"type": args.probe, **probe_kw}, "embeddings": emb.stats,
        "rows": rows, "reference_notes": notes, "seconds": round(seconds, 1),
        "arguments": cli.args_record(args)}


# ----------------------------------------------------------------------------------------------- figure
def _metric_panel(ax, rows: list[dict], ys, key: str, name: str, ref: dict | None) -> None:
    import numpy as np

    for y, r in zip(ys, rows):
        v = r.get(key, np.nan)
        std = r.get(f"{key}_std")
        ax.barh(y, v, height=0.7, color=KIND_COLORS.get(r["kind"], "#4c78a8"),
                xerr=std if isinstance(std, float) else None, capsize=3, error_kw={"lw": 1})
        text = f"{v:.3f}" + (f" ± {std:.3f}" if isinstance(std, float) else "")
        ax.text(min(v + (std or 0.0), 1.0) + 0.01, y, text, va="center", fontsize=7.5)
    if ref is not None and isinstance(ref.get(key), float):
        ax.axvline(ref[key], color=KIND_COLORS["reference"], ls="--", lw=1)
    ax.set_xlim(0, 1.18)
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.set_title(name, fontsize=10)
    ax.grid(axis="x", alpha=0.25, lw=0.5)
    ax.set_axisbelow(True)


def comparison_figure(rows: list[dict], path: Path, title: str) -> Path:
    """One panel per metric of FIGURE_METRICS, one horizontal bar per row (coloured by kind: probe, zero-shot,
    reference), ± std where a row has one, and a dashed line at the reference's best run."""
    import numpy as np

    from msa.io import save_figure
    from msa.plots import pyplot

    plt = pyplot()
    n = len(rows)
    fig, axes = plt.subplots(1, len(FIGURE_METRICS), figsize=(4.2 * len(FIGURE_METRICS) + 2.2, 0.42 * n + 1.6),
                             sharey=True, squeeze=False)
    ys = np.arange(n)[::-1]
    ref = next((r for r in rows if r["id"] == "reference"), None)
    for ax, (key, name) in zip(axes[0], FIGURE_METRICS):
        _metric_panel(ax, rows, ys, key, name, ref)
    axes[0][0].set_yticks(ys, [r["short"] for r in rows])
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    handles = [plt.Rectangle((0, 0), 1, 1, color=KIND_COLORS.get(k, "#4c78a8")) for k in kinds]
    fig.legend(handles, kinds, loc="lower center", ncol=len(kinds), frameon=False, fontsize=8,
               bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(title, fontsize=10.5)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    out = save_figure(fig, path)
    plt.close(fig)
    return out
