"""Phase 4 as a stage: hard training posts mined with phase 3's models, their images captioned, the augmented
training index of each mode, fine-tuning from phase 3 on exactly phase 3's validation posts, the comparison table
and the selection of the best run. ``phase4/run_phase4.py`` is the front end (flags, stamp, figures);
:mod:`msa.augment` holds the mining and feature-augmentation primitives.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from msa import cli

log = logging.getLogger("phase4")
METRICS = ("accuracy", "weighted_f1", "macro_f1", "f1_neutral", "weighted_precision", "weighted_recall", "ece")
TABLE_METRICS = (("accuracy", "accuracy"), ("weighted_f1", "weighted F1"), ("macro_f1", "macro F1"),
                 ("f1_neutral", "neutral F1"))
SELECT_METRICS = ("weighted_f1", "macro_f1", "f1_neutral", "accuracy")


# ----------------------------------------------------------------------------------------------- inputs
def read_phase3(phase3_dir: Path) -> dict:
    from msa.settings import read_json_file

    path = Path(phase3_dir) / "best.json"
    if not path.is_file():
        raise cli.UserError(f"{path} not found: run phase 3 first (python phase3/run_phase3.py --data-root DATA)")
    best = read_json_file(path, "phase 3 best.json")
    for key in ("method", "settings", "loss_kw", "checkpoint", "split_sha256"):
        if key not in best:
            raise cli.UserError(f"{path} has no {key!r}: rerun phase 3 with this version")
    return best


def start_checkpoints(best: dict, phase3_dir: Path, seeds: list[int], init: str) -> dict[int, Path]:
    """The phase-3 checkpoint each seed fine-tunes."""
    fallback = Path(phase3_dir) / "best" / "checkpoint"
    if not (fallback / "model.safetensors").is_file():
        fallback = Path(best["checkpoint"])
    out = {}
    for seed in seeds:
        ckpt = Path(phase3_dir) / "runs" / f"{best['method']}-s{seed}" / "checkpoint"
        if init == "best":
            ckpt = fallback
        elif not (ckpt / "model.safetensors").is_file():
            log.warning("phase 3 has no run %s-s%d: seed %d fine-tunes phase3 best/ instead", best["method"], seed,
                        seed)
            ckpt = fallback
        if not (ckpt / "model.safetensors").is_file():
            raise cli.UserError(f"phase 3 checkpoint {ckpt} not found: rerun phase 3")
        out[seed] = ckpt
    return out


def starting_features(starts: dict, data, args):
    """The features phase 3's models were trained on (backbone weights checked against the first checkpoint) and
    their side features: ``(features, text backbone, image backbone, token modalities, checkpoint config)``."""
    from msa import side as side_mod
    from msa.checkpoint import load_checkpoint
    from msa.experiment import labelled_features
    from msa.predict import backbones_for

    first = starts[next(iter(starts))]
    _, ckpt_cfg = load_checkpoint(first)
    tb, ib = backbones_for(ckpt_cfg)
    token_mods = list(ckpt_cfg.get("token_modalities", []))
    side_mod.check_flag(args.side_features, ckpt_cfg, f"phase 3's checkpoint {first}")
    data_dir = Path(args.data_root) / "data"
    fs = labelled_features(data_dir, data.guids, tb, ib, args.cache_dir, token_mods, args.feature_batch_size)
    fs = side_mod.attach(fs, side_mod.for_checkpoint(ckpt_cfg, data.guids, data_dir, args.cache_dir))
    return fs, tb, ib, token_mods, ckpt_cfg


# ----------------------------------------------------------------------------------------------- steps
def score_and_mine(starts: dict, fs, data, ckpt_cfg: dict, token_mods: list[str], args):
    """Per seed: phase 3's model on validation (the "before" rows) and the hard posts it finds among the training
    rows; returns ``(before rows, every hard post of every seed, {seed: selected training rows})``."""
    import pandas as pd

    from msa.augment import mine_hard
    from msa.checkpoint import load_checkpoint
    from msa.data import LABELS
    from msa.metrics import classification_metrics
    from msa.trainer import predict_rows

    train_rows_base = list(data.train_idx)
    before, hard_frames, hard_by_seed = [], [], {}
    for seed, ckpt in starts.items():
        model, cfg = load_checkpoint(ckpt)
        if cfg.get("backbones") != ckpt_cfg.get("backbones"):
            raise cli.UserError(f"{ckpt} was trained on other backbones than {starts[next(iter(starts))]}")
        val_p = predict_rows(model, fs, data.val_idx, token_mods)
        m = classification_metrics(data.labels[data.val_idx], val_p.argmax(1), val_p, LABELS)
        _check_saved_metrics(ckpt, m)
        before.append({"mode": "phase 3", "seed": seed, "run_dir": str(ckpt.parent), "n_train": len(train_rows_base),
                       "n_hard": 0, **{k: m[k] for k in METRICS}, "confusion_matrix": m["confusion_matrix"]})
        tr_p = predict_rows(model, fs, train_rows_base, token_mods)
        hard = mine_hard(tr_p, data.labels[train_rows_base], train_rows_base, args.neutral_threshold,
                         args.sample_ratio, args.max_hard or None, seed)
        hard.insert(0, "seed", seed)
        hard.insert(1, "guid", [data.guids[r] for r in hard["row"]])
        hard_frames.append(hard)
        hard_by_seed[seed] = hard.loc[hard["selected"], "row"].astype(int).tolist()
        log.info("seed %d: %d of %d training posts are hard (%d misclassified), %d selected", seed, len(hard),
                 len(train_rows_base), int(hard["reason"].str.startswith("misclassified").sum()),
                 len(hard_by_seed[seed]))
    return before, pd.concat(hard_frames, ignore_index=True), hard_by_seed


def _check_saved_metrics(ckpt: Path, m: dict) -> None:
    run_metrics = ckpt.parent / "metrics.json"
    if run_metrics.is_file():
        saved = json.loads(run_metrics.read_text(encoding="utf-8"))
        if abs(float(saved.get("weighted_f1", m["weighted_f1"])) - m["weighted_f1"]) > 1e-6:
            log.warning("%s: validation weighted F1 %.4f now, %.4f when phase 3 saved it (features changed?)",
                        ckpt, m["weighted_f1"], float(saved["weighted_f1"]))


def caption_hard(wanted: list[int], guids: list[str], modes: list[str], image_backbone, args, api_key: str,
                 failures_path: Path) -> tuple[dict[int, str], list[dict]]:
    """Captions for every selected hard post of any seed (cached; failures recorded, never fatal):
    ``({row: caption}, captions.csv rows)``."""
    from msa.captioning import build_captioner, items_from_data_dir

    captions: dict[int, str] = {}
    cap_rows = []
    if wanted and any(mode != "none" for mode in modes):
        captioner = build_captioner(args, image_backbone, api_key, failures_path)
        results = captioner.caption(items_from_data_dir(Path(args.data_root) / "data", [guids[r] for r in wanted]))
        for r, res in zip(wanted, results):
            if res.ok:
                captions[r] = " ".join(res.caption.split())
            cap_rows.append({"guid": guids[r], "caption": res.caption or "", "source": res.source,
                             "error": res.error or ""})
        failed = len(wanted) - len(captions)
        log.info("captions: %d of %d hard posts captioned by %s%s", len(captions), len(wanted), captioner.name,
                 f"; {failed} failed (see {failures_path})" if failed else "")
        if not captions:
            log.warning("no caption succeeded: the caption modes train on the unaugmented split")
    return captions, cap_rows


def fine_tuning_settings(best3: dict, args) -> dict:
    """Phase 3's settings with the fine-tuning learning rate, epochs, patience and warm-up."""
    base = dict(best3["settings"])
    lr = args.learning_rate if args.learning_rate is not None else float(base["learning_rate"]) * args.lr_scale
    return {**base, "learning_rate": lr, "num_epochs": args.num_epochs, "patience": args.patience,
            "warmup_ratio": args.warmup_ratio}


def run_specs(modes: list[str], seeds: list[int], data, hard_by_seed: dict, aug, ft: dict, best3: dict,
              starts: dict, args) -> list:
    """One fine-tuning run per mode and seed, its augmented training index written to its run folder."""
    from msa.augment import index_frame, train_rows
    from msa.experiment import RunSpec
    from msa.io import write_csv

    specs = []
    for mode in modes:
        for seed in seeds:
            rows = train_rows(mode, list(data.train_idx), hard_by_seed[seed], aug)
            run_dir = args.results_dir / "runs" / f"{mode}-s{seed}"
            write_csv(run_dir / "train_index.csv", index_frame(rows, aug, Path(args.data_root) / "data"))
            specs.append(RunSpec(run_dir, ft, seed, loss_kw=best3["loss_kw"], light=False, tag=mode,
                                 mixed_precision=args.mixed_precision, init_from=starts[seed], train_idx=rows,
                                 resume=args.resume))
    return specs


def check_same_validation(specs: list, val_guids: list[str]) -> None:
    """Every fine-tuning run was validated on exactly phase 3's validation posts."""
    import pandas as pd

    for sp in specs:
        got = sorted(pd.read_csv(sp.run_dir / "val_predictions.csv", dtype=str)["guid"])
        if got != val_guids:
            raise RuntimeError(f"{sp.run_dir} was validated on other posts than phase 3")


def after_rows(specs: list, results: list[dict], hard_by_seed: dict, captions: dict) -> list[dict]:
    return [{"mode": sp.tag, "seed": sp.seed, "n_train": len(sp.train_idx or []),
             "n_hard": 0 if sp.tag == "none" else sum(r in captions for r in hard_by_seed[sp.seed]),
             **{k: v for k, v in r.items() if k not in ("tag", "seed", "labels")}}
            for sp, r in zip(specs, results)]


def select_best(runs, table, modes: list[str], seeds: list[int], metric: str, ft: dict, best3: dict, data,
                results_dir: Path) -> tuple[dict, Path]:
    """The best mode by mean ``metric`` over seeds, then its best seed, copied to ``<results>/best``; the
    best.json record and the folder."""
    from msa.checkpoint import copy_run_dir

    best_mode = str(table.loc[modes, f"{metric}_mean"].idxmax())
    cand = runs[runs["mode"] == best_mode]
    best_row = cand.loc[cand[metric].idxmax()]
    best_dir = copy_run_dir(Path(best_row["run_dir"]), results_dir / "best")
    best = {"mode": best_mode, "seed": int(best_row["seed"]), "select_metric": metric,
            "value": float(best_row[metric]), "run_dir": str(best_row["run_dir"]), "copied_to": str(best_dir),
            "checkpoint": str(best_dir / "checkpoint"),
            "seed_runs": [str(p) for p in cand["run_dir"]],
            "selected_by": f"best mean validation {metric} over seeds {seeds} among modes {modes}, then the best seed",
            "metrics": {k: float(best_row[k]) for k in METRICS},
            "method_mean": {k: {"mean": float(table.loc[best_mode, f"{k}_mean"]),
                                "std": float(table.loc[best_mode, f"{k}_std"])} for k in METRICS},
            "phase3": {"method": best3["method"], "mean": {k: float(table.loc["phase 3", f"{k}_mean"])
                                                            for k in METRICS}},
            "settings": ft, "loss_kw": best3["loss_kw"], "split": data.split.name,
            "split_sha256": data.split.sha256, "seeds": seeds}
    return best, best_dir


# ----------------------------------------------------------------------------------------------- tables
def summarise(runs, rows: list[str]):
    import pandas as pd

    from msa.metrics import mean_std_columns

    out = []
    for name in rows:
        grp = runs[runs["mode"] == name]
        out.append({"method": name, "n_seeds": len(grp),
                    **mean_std_columns(grp, METRICS + ("best_epoch", "seconds", "n_train", "n_hard"))})
    return pd.DataFrame(out).set_index("method")


def paired_changes(runs, modes: list[str], reference: str = "phase 3") -> list[dict]:
    """Each mode minus phase 3 on the same seed: mean and std of the per-seed differences, and seed wins."""
    from msa.metrics import mean_std

    ref = runs[runs["mode"] == reference].set_index("seed")
    out = []
    for mode in modes:
        cur = runs[runs["mode"] == mode].set_index("seed")
        common = cur.index.intersection(ref.index)
        row = {"mode": mode, "n": int(len(common))}
        for m, _ in TABLE_METRICS:
            d = cur.loc[common, m] - ref.loc[common, m]
            row[f"{m}_delta"], row[f"{m}_delta_std"] = mean_std(d, skipna=True)
            row[f"{m}_wins"] = int((d > 0).sum())
        out.append(row)
    return out


def markdown(table, changes, header: str, notes: list[str], best: dict, select_metric: str) -> str:
    from msa.metrics import pm

    lines = [header, "", *notes, "",
             "Mean ± std over seeds on the validation split (the same posts for every row). The selected mode "
             f"(best mean {select_metric}) is in bold.", "",
             "| model | " + " | ".join(n for _, n in TABLE_METRICS) + " | training posts | hard used | best epoch |",
             "|---|" + "---:|" * (len(TABLE_METRICS) + 3)]
    for method, r in table.iterrows():
        name = f"**{method}**" if method == best["mode"] else method
        lines.append(f"| {name} | " + " | ".join(pm(r, k) for k, _ in TABLE_METRICS)
                     + f" | {r.get('n_train_mean', float('nan')):.0f} | {r.get('n_hard_mean', 0):.0f} | "
                     + f"{r.get('best_epoch_mean', float('nan')):.1f} |")
    if changes:
        lines += ["", "Change against phase 3 with the same seed (mean ± std of the per-seed differences; seeds "
                  "improved):", "", "| mode | " + " | ".join(f"Δ {n}" for _, n in TABLE_METRICS) + " |",
                  "|---|" + "---:|" * len(TABLE_METRICS)]
        for c in changes:
            lines.append(f"| {c['mode']} | " + " | ".join(
                f"{c[f'{k}_delta']:+.4f} ± {c[f'{k}_delta_std']:.4f} ({c[f'{k}_wins']}/{c['n']})"
                for k, _ in TABLE_METRICS) + " |")
    lines += ["", f"Best run: `{best['mode']}` seed {best['seed']} ({select_metric} {best['value']:.4f}) -> "
              f"`{best['copied_to']}` (predict_test.py's default checkpoint)."]
    return "\n".join(lines) + "\n"
