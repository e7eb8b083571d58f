"""Phase 4 as a stage: hard training posts mined with phase 3's models, their images captioned, the augmented
training index of each mode, fine-tuning from phase 3 on exactly phase 3's validation posts, the comparison table
and the selection of the best run, the summary and the figures; :func:`run` is the whole phase on the parsed
flags. ``phase4/run_phase4.py`` is the front end (flags, API key, stamp); :mod:`msa.augment` holds the mining and
feature-augmentation primitives.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from msa import cli

log = logging.getLogger("phase4")
METRICS = ("accuracy", "weighted_f1", "macro_f1", "f1_neutral", "weighted_precision", "weighted_recall", "ece")
TABLE_METRICS = (("accuracy", "accuracy"), ("weighted_f1", "weighted F1"), ("macro_f1", "macro F1"),
                 ("f1_neutral", "neutral F1"))
SELECT_METRICS = ("weighted_f1", "macro_f1", "f1_neutral", "accuracy")
#: which phase-3 checkpoint each seed fine-tunes (``--init``)
INITS = ("per-seed", "best")


# ----------------------------------------------------------------------------------------------- the phase
def run(args, modes: list[str], api_key: str, t0: float) -> tuple[str, dict, Path]:
    """Phase 4 on the parsed flags of ``phase4/run_phase4.py``: mining, captions, fine-tuning, the tables,
    best/ and the figures, written under ``--results-dir`` and ``--figures-dir``. Returns ``(summary.md text,
    best.json record, the best run's copy)``."""
    import pandas as pd

    from msa.io import write_csv
    from msa.records import write_best
    from msa.workers import prestart

    prestart(args.jobs)  # the workers' fork server imports meanwhile (msa.workers)
    best3, seeds, data = load_inputs(args)
    starts = start_checkpoints(best3, args.phase3_dir, seeds, args.init)
    fs, tb, ib, token_mods, ckpt_cfg = starting_features(starts, data, args)
    # 1. phase 3 on validation and mining on the training split; 2. captions of the selected hard posts
    before, hard_all, hard_by_seed = score_and_mine(starts, fs, data, ckpt_cfg, token_mods, args)
    wanted = sorted({r for rows in hard_by_seed.values() for r in rows})
    captions = write_captions(wanted, hard_all, data.guids, modes, ib, args, api_key)
    # 3. the augmented feature rows, one fine-tuning run per mode and seed; 4. the same validation posts
    ft = fine_tuning_settings(best3, args)
    specs, results = fine_tune(modes, seeds, data, fs, tb, hard_by_seed, captions, ft, best3, starts, args)

    runs = pd.DataFrame(before + after_rows(specs, results, hard_by_seed, captions))
    write_csv(args.results_dir / "runs.csv", runs.drop(columns=["confusion_matrix"]))
    table = summarise(runs, ["phase 3"] + modes)
    write_csv(args.results_dir / "summary.csv", table.reset_index())
    best, best_dir = select_best(runs, table, modes, seeds, args.select_metric, ft, best3, data,
                                 args.results_dir)
    write_best(args.results_dir, best)
    counts = {"per_seed": {s: int((hard_all["seed"] == s).sum()) for s in seeds},
              "selected": {s: len(v) for s, v in hard_by_seed.items()}, "captioned": len(captions),
              "caption_failures": len(wanted) - len(captions)}
    md = write_summary(table, runs, best, best3, ft, counts, len(wanted), modes, seeds, data, len(specs), t0, args)
    write_figures(table, runs, hard_all, best["mode"], seeds, Path(args.data_root) / "data",
                  captioner_label(args), args)
    return md, best, best_dir


def load_inputs(args):
    """Phase 3's best.json, the seeds (``--seeds``, else phase 3's) and the labelled data, whose split must be
    the one phase 3 trained on: ``(best3, seeds, data)``."""
    from msa.experiment import load_labelled
    from msa.settings import parse_seeds

    best3 = read_phase3(args.phase3_dir)
    seeds = parse_seeds(args.seeds or ",".join(map(str, best3.get("seeds") or [42, 43, 44])))
    data = load_labelled(cli.work_dir(args), args.split)
    if data.split.sha256 != best3["split_sha256"]:
        raise cli.UserError(f"phase 3 trained on split sha256 {best3['split_sha256'][:12]}, the split "
                            f"{data.split.path} is now {data.split.sha256[:12]}: rerun phase 3 so both phases use "
                            "the same validation posts")
    return best3, seeds, data


def captioner_label(args) -> str:
    return args.captioner if args.captioner == "imagenet" else f"openai ({args.vlm_model})"


# ----------------------------------------------------------------------------------------------- inputs
def read_phase3(phase3_dir: Path):
    """Phase 3's :class:`msa.records.BestRecord`."""
    from msa.records import BEST_FILE, read_best

    path = Path(phase3_dir) / BEST_FILE
    if not path.is_file():
        raise cli.UserError(f"{path} not found: run phase 3 first (python phase3/run_phase3.py --data-root DATA)")
    return read_best(path, "phase 3 best.json")


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
    tb, ib = backbones_for(ckpt_cfg, args.cache_dir)
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


def write_captions(wanted: list[int], hard_all, guids: list[str], modes: list[str], image_backbone, args,
                   api_key: str) -> dict[int, str]:
    """:func:`caption_hard`, then captions.csv and hard_samples.csv (every hard post with its caption)."""
    import pandas as pd

    from msa.io import write_csv

    captions, cap_rows = caption_hard(wanted, guids, modes, image_backbone, args, api_key,
                                      args.results_dir / "caption_failures.jsonl")
    write_csv(args.results_dir / "captions.csv", pd.DataFrame(cap_rows, columns=["guid", "caption", "source",
                                                                                  "error"]))
    hard_all["caption"] = [captions.get(int(r), "") for r in hard_all["row"]]
    write_csv(args.results_dir / "hard_samples.csv", hard_all.drop(columns=["row"]))
    return captions


def fine_tune(modes: list[str], seeds: list[int], data, fs, text_backbone, hard_by_seed: dict, captions: dict,
              ft: dict, best3: dict, starts: dict, args) -> tuple[list, list[dict]]:
    """The augmented feature rows and one fine-tuning run per mode and seed, each validated on exactly phase 3's
    validation posts: ``(run specs, their results)``."""
    from msa.augment import augment_features
    from msa.experiment import Labelled, run_grid

    aug = augment_features(fs, data.labels, captions, Path(args.data_root) / "data", text_backbone, args.cache_dir,
                           args.feature_batch_size)
    aug_data = Labelled(aug.fs.guids, aug.labels, data.split, list(data.train_idx), list(data.val_idx))
    record = cli.args_record(args) | {
        "phase3": {"method": best3["method"], "best_json": str(Path(args.phase3_dir) / "best.json")},
        "fine_tuning": ft, "captioned": len(captions)}
    specs = run_specs(modes, seeds, data, hard_by_seed, aug, ft, best3, starts, args)
    results = run_grid(specs, aug.fs, aug_data, jobs=args.jobs, record=record, desc="phase 4 mode x seed")
    check_same_validation(specs, sorted(data.guids[i] for i in data.val_idx))
    return specs, results


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


def select_best(runs, table, modes: list[str], seeds: list[int], metric: str, ft: dict, best3, data,
                results_dir: Path):
    """The best mode by mean ``metric`` over seeds, then its best seed, copied to ``<results>/best``; the
    best.json record (:class:`msa.records.BestRecord`, with the mode as its method) and the folder."""
    from msa.records import select_best as best_of

    mode = str(table.loc[modes, f"{metric}_mean"].idxmax())
    best = best_of(mode, runs[runs["mode"] == mode], table, metric, results_dir, METRICS,
                   selected_by=f"best mean validation {metric} over seeds {seeds} among modes {modes}, then the "
                               "best seed",
                   settings=ft, loss_kw=best3["loss_kw"], data=data, seeds=seeds,
                   extra={"mode": mode, "phase3": {"method": best3["method"],
                                                   "mean": {k: float(table.loc["phase 3", f"{k}_mean"])
                                                            for k in METRICS}}})
    return best, Path(best.copied_to)


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


def write_summary(table, runs, best: dict, best3: dict, ft: dict, counts: dict, n_wanted: int, modes: list[str],
                  seeds: list[int], data, n_runs: int, t0: float, args) -> str:
    """summary.md and summary.json (the table, the paired changes, the hard-sample counts); returns the
    markdown."""
    from msa.io import write_json, write_text

    changes = paired_changes(runs, modes)
    n_val = len(data.val_idx)
    captioner_name = captioner_label(args)
    header = (f"# Phase 4: hard samples + caption augmentation (split `{data.split.name}`, {n_val} "
              f"validation posts, seeds {', '.join(map(str, seeds))}, {n_runs} fine-tuning runs, "
              f"{time.time() - t0:.0f} s)")
    md = markdown(table, changes, header, notes(best3, args, ft, seeds, counts, n_wanted, n_val, captioner_name),
                  best, args.select_metric)
    write_text(args.results_dir / "summary.md", md)
    write_json(args.results_dir / "summary.json",
               {"table": table.reset_index().to_dict(orient="records"), "paired_changes": changes, "best": best,
                "hard_samples": counts, "captioner": captioner_name, "modes": modes, "seeds": seeds,
                "fine_tuning": ft, "same_validation_guids": True, "validation_posts": n_val,
                "phase3": {k: best3[k] for k in ("method", "checkpoint", "split_sha256")},
                "seconds": round(time.time() - t0, 1)})
    return md


def notes(best3: dict, args, ft: dict, seeds: list[int], counts: dict, n_wanted: int, n_val: int,
          captioner_name: str) -> list[str]:
    n_hard, n_sel, n_cap = counts["per_seed"], counts["selected"], counts["captioned"]
    return [f"Started from phase 3's `{best3['method']}` ({args.init} checkpoints); captioner {captioner_name}; "
            f"fine-tuning lr {ft['learning_rate']:.3g}, at most {args.num_epochs} epochs, patience {args.patience}.",
            "",
            "Hard training posts per seed (misclassified, or true neutral with p(neutral) < "
            f"{args.neutral_threshold}): " + ", ".join(f"seed {s}: {n_hard[s]} hard, {n_sel[s]} selected"
                                                        for s in seeds)
            + f"; {n_cap} of {n_wanted} selected posts captioned"
            + (f" ({n_wanted - n_cap} failed)" if n_wanted > n_cap else "") + ".",
            "", f"Validation: {n_val} posts, identical to phase 3's for every run."]


# ----------------------------------------------------------------------------------------------- figures
def write_figures(table, runs, hard_all, best_mode: str, seeds: list[int], data_dir: Path, captioner_name: str,
                  args) -> None:
    """comparison.png (phase 3 vs each mode), confusion.png (before/after, seeds summed), hard_samples.png."""
    import numpy as np
    import pandas as pd

    from msa.data import LABELS, read_text
    from msa.plots import confusion_grid, grouped_bars, hard_samples_figure

    grouped_bars(table, [(k, n) for k, n in TABLE_METRICS if k != "macro_f1"],
                 args.figures_dir / "comparison.png", ylim=(0, 1),
                 title=f"Phase 3 vs phase 4 on the validation split (mean ± std over {len(seeds)} seed(s))")
    matrices = {}
    for name in ("phase 3", best_mode):
        cms = [np.asarray(c) for c in runs.loc[runs["mode"] == name, "confusion_matrix"]]
        label = "phase 3 (before)" if name == "phase 3" else f"phase 4, {name} (after)"
        matrices[f"{label}\nneutral F1 {table.loc[name, 'f1_neutral_mean']:.3f}"] = sum(cms)
    confusion_grid(matrices, LABELS, args.figures_dir / "confusion.png",
                   title=f"Validation confusion matrices, {len(seeds)} seed(s) summed (row % = recall)")
    shown = hard_all[hard_all["selected"] & (hard_all["seed"] == seeds[0])]
    shown = shown[shown["caption"] != ""].drop_duplicates("guid")
    if len(shown):
        picks = pd.concat([shown[shown["label"] == lab].head(max(1, args.gallery // len(LABELS)))
                           for lab in LABELS]).head(args.gallery)
        samples = [{**r, "text": read_text(data_dir, r["guid"]).raw} for r in picks.to_dict(orient="records")]
        hard_samples_figure(samples, data_dir, args.figures_dir / "hard_samples.png",
                            title=f"Hard training posts of seed {seeds[0]} with their captions ({captioner_name})")
