"""Phase 6: linear probes (and zero-shot prompts) on frozen CLIP image, text and image+text embeddings,
compared with the phase-4 model on phase 0's validation split; reads the cleaned index, the split, a local CLIP
folder and the reference model's metrics.json, writes phase6/results/summary.{csv,md,json},
val_predictions.csv and phase6/figures/comparison.png.

Run from the repository root after phase 0 (and, for the reference row, phase 4, 3 or 1):

    python phase6/run_phase6.py --data-root dataset/
    python phase6/run_phase6.py --data-root ../shared/mvsa --clip-model pretrained_models/clip-vit-large-patch14-336

CLIP (--clip-model, any local Hugging Face CLIP-like folder) is frozen and loaded with local_files_only, never
with remote code. Its projected image_embeds and text_embeds are L2-normalised and cached under
<cache-dir>/clip-{image,text}-<key>/ (the key covers the folder's weights sha256 and preprocessing, so a rerun
computes nothing). Texts are the same normalised texts every phase uses, truncated at 77 CLIP tokens.

Probes: multinomial logistic regression on the image, the text and the image+text embeddings (the
concatenation of the two normalised embeddings), standardised with training statistics; C is chosen from
--c-grid by stratified --cv-folds cross-validation on the training split alone (folds shuffled with --seed,
scored by --cv-metric), refit on the whole training split and evaluated once on the validation split, the same
one every phase uses. Zero-shot rows: softmax of CLIP's logit scale x cosine similarity to the prompt-ensemble
class embeddings ("a {negative|neutral|positive} photo.", ... averaged), for the image, the text and both
(mean similarity). No training data is used by them.

Without the CLIP folder the phase warns, naming the missing folder and how to get it, and runs the same probes
on the frozen default backbones' cached features (MiniLM + EfficientNet-Lite0): those rows are labelled as
such, never as CLIP, and there are no zero-shot rows. It still exits 0.

Reference row (--reference auto): phase4/results/best/metrics.json, else phase3/..., else phase1/... (the
row names where it came from), plus the mean ± std over seeds of the best method when <phase>/results/best.json
records it. A reference measured on another split is flagged in the table.

Reads  <work-dir>/train_cleaned.txt, splits/<split>.csv (phase 0), <data-root>/data/, --clip-model, the feature
       cache, the reference's metrics.json (+ config.json, best.json)
Writes <results-dir>/summary.csv, summary.md, summary.json (every row's metrics, chosen C and CV scores per C,
       embedding cache statistics, the reference), val_predictions.csv (row, guid, label, pred, probabilities);
       <figures-dir>/comparison.png (weighted F1, neutral F1 and accuracy per row)
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from msa import cli, stamp

log = logging.getLogger("phase6")
PHASE_DIR = Path(__file__).resolve().parent
REFERENCE_PHASES = ("phase4", "phase3", "phase1")
FALLBACK_FEATURES = "frozen default backbones (MiniLM + EfficientNet-Lite0), not CLIP"
FALLBACK_BACKBONES = ("minilm", "efficientnet_lite0")
TABLE_METRICS = (("accuracy", "accuracy"), ("weighted_f1", "weighted F1"), ("macro_f1", "macro F1"),
                 ("f1_neutral", "neutral F1"), ("ece", "ECE"))
FIGURE_METRICS = (("weighted_f1", "weighted F1"), ("f1_neutral", "neutral F1"), ("accuracy", "accuracy"))
PROBE_SETS = ("image", "text", "image+text")


def build_parser() -> cli.ArgumentParser:
    from msa.clip import DEFAULT_CLIP
    from msa.probes import CV_METRICS, DEFAULT_CS

    p = cli.ArgumentParser(description=__doc__)
    cli.add_data_args(p)
    g = p.add_argument_group("CLIP")
    g.add_argument("--clip-model", type=Path, default=DEFAULT_CLIP,
                   help="local Hugging Face CLIP-like folder (config.json, weights, tokenizer, "
                        "preprocessor_config.json); a bare name is also looked up in pretrained_models/. Missing: "
                        "a warning, and the probes run on the default backbones instead (not CLIP)")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where CLIP runs (auto: cuda when available)")
    g.add_argument("--batch-size", type=cli.positive_int, default=32, help="batch size of the frozen encoders")
    pr = p.add_argument_group("probes")
    pr.add_argument("--probe", default="logreg", choices=["logreg"],
                    help="probe type: multinomial logistic regression (sklearn, lbfgs)")
    pr.add_argument("--cv-folds", type=cli.positive_int, default=5,
                    help="stratified folds of the training split that choose C (the validation split is never used)")
    pr.add_argument("--c-grid", default=",".join(f"{c:g}" for c in DEFAULT_CS),
                    help="comma-separated values of C (inverse regularisation strength) to choose from")
    pr.add_argument("--cv-metric", default="weighted_f1", choices=CV_METRICS,
                    help="cross-validation score that chooses C (ties: the smaller C)")
    pr.add_argument("--class-weight", default="none", choices=["none", "balanced"],
                    help="logistic-regression class weights: none, or inversely proportional to class frequency")
    pr.add_argument("--no-standardize", action="store_true",
                    help="fit on the normalised embeddings as they are (default: standardise each dimension with "
                         "the training rows' mean and std)")
    pr.add_argument("--seed", type=int, default=42, help="seed of the cross-validation folds")
    o = p.add_argument_group("reference and output")
    o.add_argument("--reference", default="auto",
                   help="reference model row: 'auto' (phase4/results/best/metrics.json, else phase3's, else "
                        "phase1's), 'none', or a run folder / metrics.json path")
    o.add_argument("--cache-dir", type=Path, default=cli.CACHE_ROOT / "features",
                   help="feature and embedding cache folder")
    o.add_argument("--results-dir", type=Path, default=PHASE_DIR / "results", help="where the tables go")
    o.add_argument("--figures-dir", type=Path, default=PHASE_DIR / "figures", help="where the figure goes")
    o.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    stamp.add_force_arg(o)
    return p


# ------------------------------------------------------------------------------------------------ inputs
def parse_grid(text: str) -> list[float]:
    try:
        cs = [float(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise cli.UserError(f"--c-grid: {text!r} is not a comma-separated list of numbers") from None
    if not cs or any(not c > 0 for c in cs):
        raise cli.UserError(f"--c-grid needs positive numbers, got {text!r}")
    return sorted(set(cs))


def _rel(path: Path) -> str:
    path = Path(path).resolve()
    try:
        return str(path.relative_to(cli.REPO_ROOT))
    except ValueError:
        return str(path)


def _metric_values(d: dict) -> dict:
    return {k: float(d[k]) for k, _ in TABLE_METRICS if isinstance(d.get(k), (int, float))}


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
    cfg_path = run / "config.json"
    cfg = {}
    if cfg_path.is_file():
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cfg = {}
    cfg = cfg if isinstance(cfg, dict) else {}
    split_info = cfg.get("split") if isinstance(cfg.get("split"), dict) else {}
    backbones = cfg.get("backbones") if isinstance(cfg.get("backbones"), dict) else {}
    names = [Path(str(b.get("name"))).name for b in backbones.values() if isinstance(b, dict) and b.get("name")]
    features = (f"'{cfg.get('fusion', '?')}' fusion head trained on frozen {' + '.join(names)} features" if names
                else "trained head (see its config.json)")
    same_split = None
    if split_info.get("sha256"):
        same_split = split_info["sha256"] == split.sha256
        if not same_split:
            msg = (f"the reference {source} was measured on split {split_info.get('name')!r} "
                   f"(sha256 {str(split_info['sha256'])[:12]}), phase 6 on {split.name!r} "
                   f"(sha256 {split.sha256[:12]}): its numbers are not on the same validation posts")
            log.warning(msg)
            notes.append(f"**Caution**: {msg}.")
    else:
        notes.append(f"The reference's split could not be checked ({_rel(cfg_path)} has no split sha256).")
    label_phase = f"phase {phase[-1]}" if phase else "reference"
    other = " (other split!)" if same_split is False else ""
    rows = [{"id": "reference", "phase": phase, "label": f"{who}, best run ({source})",
             "short": f"{label_phase} best run{other}",
             "kind": "reference", "features": features,
             "source": source, "same_split": same_split, "n_val": metrics.get("n"), **_metric_values(metrics)}]
    best_json = run.parent / "best.json" if run.name == "best" else None
    if best_json is not None and best_json.is_file():
        try:
            best = json.loads(best_json.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            best = {}
        mm = best.get("method_mean") if isinstance(best, dict) else None
        if isinstance(mm, dict) and all(isinstance(mm.get(k), dict) for k in ("weighted_f1", "f1_neutral",
                                                                              "accuracy")):
            n = len(best.get("seeds") or best.get("seed_runs") or [])
            seeds = f"{n} seeds" if n else "seeds"
            name = best.get("method") or best.get("mode")
            what = f"best method '{name}'" if name else "best method"
            row = {"id": "reference_mean", "phase": phase,
                   "label": f"{who}, {what} mean ± std over {seeds} ({_rel(best_json)})",
                   "short": f"{label_phase} mean ± std{other}",
                   "kind": "reference", "features": rows[0]["features"], "source": _rel(best_json),
                   "same_split": same_split, "n_val": metrics.get("n")}
            for k, _ in TABLE_METRICS:
                if isinstance(mm.get(k), dict):
                    row[k] = float(mm[k]["mean"])
                    row[f"{k}_std"] = float(mm[k]["std"])
            rows.append(row)
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

    tb, ib = load_backbones(*FALLBACK_BACKBONES)
    fs = labelled_features(data_dir, data.guids, tb, ib, args.cache_dir, batch_size=args.batch_size)
    img = torch.nn.functional.normalize(fs.pooled["image"].float(), dim=-1)
    txt = torch.nn.functional.normalize(fs.pooled["text"].float(), dim=-1)
    sets = {"image": img.numpy(), "text": txt.numpy(), "image+text": torch.cat([img, txt], 1).numpy()}
    stats = {m: {**s, "cache": str(args.cache_dir)} for m, s in fs.stats.items()}
    info = {"mode": "fallback", "features": FALLBACK_FEATURES, "backbones": fs.backbones}
    labels = {"image": "linear probe, image (EfficientNet-Lite0)", "text": "linear probe, text (MiniLM)",
              "image+text": "linear probe, image+text (MiniLM + EfficientNet-Lite0)"}
    return sets, {}, info, stats, labels


# ----------------------------------------------------------------------------------------------- tables
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


KIND_COLORS = {"linear probe": "#4c78a8", "zero-shot": "#9d9d9d", "reference": "#f58518"}


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


def main(argv=None) -> int:
    import pandas as pd
    import torch

    from msa.clip import clip_problem, how_to_get, resolve_folder
    from msa.data import LABELS
    from msa.experiment import load_labelled
    from msa.io import write_csv, write_json, write_text
    from msa.metrics import classification_metrics
    from msa.probes import check_folds, evaluate_probe

    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)
    t0 = time.time()
    cs = parse_grid(args.c_grid)
    data = load_labelled(cli.work_dir(args), args.split)
    check_folds(data.labels[data.train_idx], args.cv_folds)
    data_dir = Path(args.data_root) / "data"
    if not data_dir.is_dir():
        raise cli.UserError(f"{data_dir} not found: --data-root must hold data/{{guid}}.jpg|.txt")
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise cli.UserError("--device cuda: no CUDA device is available")

    ref_rows, notes = find_reference(args.reference, data.split)  # a bad --reference fails before any work
    clip_folder, _ = resolve_folder(args.clip_model)
    stamp_path = args.results_dir / "inputs.json"
    inputs = stamp.inputs_of(args, files=stamp.phase0_files(cli.work_dir(args), args.split)
                             + reference_files(args.reference), code=[PHASE_DIR],
                             extra={"clip_folder": str(clip_folder), "clip_listing": stamp.listing_digest(clip_folder)},
                             ignore=("batch_size", "device"))
    if stamp.check(stamp_path, inputs, args.force, "phase 6"):
        print(f"phase 6: up to date ({args.results_dir}); --force recomputes")
        return 0
    problem = clip_problem(args.clip_model)
    warning = None
    if problem:
        warning = (f"{problem}; {how_to_get(args.clip_model)}. Running the same linear probes instead on the "
                   f"{FALLBACK_FEATURES}; no zero-shot rows.")
        log.warning(warning)
        sets, zero, info, stats, set_labels = fallback_features(args, data, data_dir)
    else:
        sets, zero, info, stats, set_labels = clip_features(args, data, data_dir, device)

    probe_kw = {"cs": cs, "folds": args.cv_folds, "seed": args.seed, "cv_metric": args.cv_metric,
                "standardize": not args.no_standardize,
                "class_weight": None if args.class_weight == "none" else args.class_weight}
    val_guids = [data.guids[i] for i in data.val_idx]
    y_val = data.labels[data.val_idx]
    rows, preds = [], []

    def add(row_id: str, label: str, short: str, kind: str, proba, metrics: dict, extra: dict) -> None:
        rows.append({"id": row_id, "label": label, "short": short, "kind": kind, "features": info["features"],
                     "source": "phase 6", "n_val": len(val_guids), **_metric_values(metrics),
                     **{k: metrics[k] for k in ("f1_negative", "f1_positive") if k in metrics}, **extra,
                     "confusion_matrix": metrics.get("confusion_matrix")})
        frame = pd.DataFrame({"row": row_id, "guid": val_guids, "label": [LABELS[k] for k in y_val],
                              "pred": [LABELS[k] for k in proba.argmax(1)]})
        for k, lab in enumerate(LABELS):
            frame[f"p_{lab}"] = proba[:, k].round(6)
        preds.append(frame)

    tag = "" if info["mode"] == "clip" else " (not CLIP)"
    for name in PROBE_SETS:
        t = time.time()
        fit, proba, metrics = evaluate_probe(sets[name], data.labels, data.train_idx, data.val_idx,
                                             label_names=LABELS, **probe_kw)
        log.info("probe %s: C %g by %d-fold CV on %d training posts (%s %.4f), validation weighted F1 %.4f, "
                 "neutral F1 %.4f (%.1f s)", name, fit.C, fit.folds, fit.n_train, fit.cv_metric,
                 max(r["mean"] for r in fit.cv), metrics["weighted_f1"], metrics["f1_neutral"], time.time() - t)
        if len(cs) > 2 and fit.C in (cs[0], cs[-1]):
            log.warning("probe %s: the chosen C %g is at the edge of --c-grid; a wider grid may fit better", name,
                        fit.C)
        add(f"probe_{name}", set_labels[name], f"probe {name}{tag}", "linear probe", proba, metrics,
            {"C": fit.C, "dim": int(sets[name].shape[1]), "cv": fit.record()})
    for name, proba in zero.items():
        metrics = classification_metrics(y_val, proba.argmax(1), proba, labels=LABELS)
        add(f"zero_shot_{name}", f"CLIP zero-shot, {name} ({Path(info['clip']['folder']).name})",
            f"zero-shot {name}", "zero-shot", proba, metrics, {})

    rows += ref_rows
    seconds = time.time() - t0

    # ---------------------------------------------------------------------------------------- outputs
    table = pd.DataFrame([{k: v for k, v in r.items() if k not in ("cv", "confusion_matrix")} for r in rows])
    write_csv(args.results_dir / "summary.csv", table)
    write_csv(args.results_dir / "val_predictions.csv", pd.concat(preds, ignore_index=True))
    what = "CLIP linear probes" if info["mode"] == "clip" else "linear probes on the default backbones (CLIP missing)"
    ref_phase = ref_rows[0]["phase"] if ref_rows else None
    versus = (f" vs the phase-{ref_phase[-1]} model" if ref_phase else " vs the reference model") if ref_rows else ""
    header = (f"# Phase 6: {what}{versus} (split `{data.split.name}`, {len(data.val_idx)} validation posts)")
    intro = []
    if warning:
        intro += [f"> **CLIP not available**: {warning}", ""]
    std_note = "standardised with the training rows' statistics, " if not args.no_standardize else ""
    cw = ", class weights balanced" if args.class_weight == "balanced" else ""
    grid = ", ".join(f"{c:g}" for c in cs)
    intro += [f"Features: {info['features']}. Probes: multinomial logistic regression on the L2-normalised "
              f"embeddings (image+text: both concatenated), {std_note}C chosen from {{{grid}}} "
              f"by stratified {args.cv_folds}-fold cross-validation on the {len(data.train_idx)} training posts only "
              f"({args.cv_metric}, folds seeded with {args.seed}{cw}), refit on them and evaluated once on the "
              f"validation split. Cells are single deterministic fits unless they show ± std over seeds."]
    if zero:
        intro += ["", "Zero-shot rows use no training data: softmax of CLIP's logit scale x cosine similarity to the "
                  f"mean embedding of {len(info['zero_shot']['templates'])} prompts per class (e.g. "
                  f"\"{info['zero_shot']['templates'][0].format('neutral')}\"); image+text averages the image and "
                  "text similarities."]
    own = [r for r in rows if r["kind"] != "reference"]
    best = max(own, key=lambda r: r["weighted_f1"])
    notes = [f"Best phase-6 row by validation weighted F1: {best['label']} ({best['weighted_f1']:.4f}, neutral F1 "
             f"{best['f1_neutral']:.4f})" + (
                 f"; the reference's best run: {ref_rows[0]['weighted_f1']:.4f} (Δ weighted F1 "
                 f"{best['weighted_f1'] - ref_rows[0]['weighted_f1']:+.4f}, Δ neutral F1 "
                 f"{best['f1_neutral'] - ref_rows[0]['f1_neutral']:+.4f})" if ref_rows and ref_rows[0]["same_split"]
                 is not False else "") + "."] + notes
    md = markdown(rows, header, intro, notes)
    write_text(args.results_dir / "summary.md", md)
    write_json(args.results_dir / "summary.json", {
        "mode": info["mode"], "warning": warning, "features": info, "split": data.split.name,
        "split_path": str(data.split.path), "split_sha256": data.split.sha256, "n_train": len(data.train_idx),
        "n_val": len(data.val_idx), "probe": {"type": args.probe, **probe_kw}, "embeddings": stats,
        "rows": rows, "reference_notes": notes, "seconds": round(seconds, 1),
        "arguments": cli.args_record(args)})

    title = (f"Phase 6: {what}{versus} (validation split '{data.split.name}', "
             f"{len(data.val_idx)} posts)")
    comparison_figure(rows, args.figures_dir / "comparison.png", title)

    stamp.write(stamp_path, inputs, outputs=[args.results_dir / n for n in ("summary.csv", "summary.md",
                                                                          "summary.json", "val_predictions.csv")]
                + [args.figures_dir / "comparison.png"])
    print(md)
    print(f"tables -> {args.results_dir}, figure -> {args.figures_dir / 'comparison.png'} ({seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
