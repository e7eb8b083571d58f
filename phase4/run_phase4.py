"""Phase 4: mines hard training posts with phase 3's models, captions their images, fine-tunes on the
augmented training split, and writes captions, runs, tables and best/ to phase4/results/.

Run from the repository root after phase 3:

    python phase4/run_phase4.py --data-root dataset/
    python phase4/run_phase4.py --data-root ../shared/mvsa --modes none,extra,append,both --neutral-threshold 0.5
    VLM_API_KEY=sk-... python phase4/run_phase4.py --data-root ../shared/mvsa --captioner openai \\
        --vlm-base-url https://dashscope.aliyuncs.com/compatible-mode/v1 --vlm-model qwen-vl-plus

Leak-free by construction: only the TRAINING split of phase 0's persisted split is scored, mined and augmented;
the validation split is never mined, augmented or re-split, so phase 3 and phase 4 are compared on exactly the same
validation posts (checked, and recorded in summary.json).

For each seed, the phase-3 run of the selected loss x sampler with that seed (--init per-seed; --init best: the
copied best run for every seed) scores the training split. Hard samples: misclassified, or true-neutral with a
neutral probability below --neutral-threshold; a seeded --sample-ratio share of them, at most --max-hard. Each
hard post's image is captioned (--captioner imagenet: offline, the image backbone's top ImageNet classes;
--captioner openai: an OpenAI-compatible vision-language endpoint such as Qwen-VL, cached). The caption enters the
training split as --modes says: extra (a new sample {guid}_vlm: same image, the caption as text, same label),
append (the caption appended to the post's text), both, or none (the same fine-tuning without captions: the
control that separates "more training" from "captions"). The phase-3 checkpoint is then fine-tuned (same trainer,
loss and its state, sampler; learning rate x --lr-scale, --num-epochs, --patience) per mode and seed.

Reads  phase3/results/best.json and its runs' checkpoints, <work-dir>/train_cleaned.txt, splits/<split>.csv,
       <data-root>/data/*, the feature and caption caches
Writes phase4/results/hard_samples.csv (every hard sample per seed, selected or not, with its caption),
       captions.csv, caption_failures.jsonl (openai captioner), runs/<mode>-s<seed>/ (train_index.csv: the
       augmented training index; config, history, metrics, val predictions, checkpoint/, figures/), runs.csv,
       summary.csv/.md/.json (phase 3 vs each mode: accuracy, weighted F1, macro F1, neutral F1, mean and std over
       seeds, and the paired change per seed), best/ + best.json (the best mode by mean --select-metric, its best
       seed; predict_test.py uses best/checkpoint by default); phase4/figures/comparison.png, confusion.png
       (before/after, seeds summed), hard_samples.png (a few hard samples with their captions)
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from msa import cli, stamp

#: Your vision-language API key may go here (environment variables VLM_API_KEY, DASHSCOPE_API_KEY, OPENAI_API_KEY
#: take precedence). It is only sent to --vlm-base-url and never written to logs, caches or results.
API_KEY = ""

log = logging.getLogger("phase4")
PHASE_DIR = Path(__file__).resolve().parent
DEFAULT_PHASE3 = PHASE_DIR.parent / "phase3" / "results"
METRICS = ("accuracy", "weighted_f1", "macro_f1", "f1_neutral", "weighted_precision", "weighted_recall", "ece")
TABLE_METRICS = (("accuracy", "accuracy"), ("weighted_f1", "weighted F1"), ("macro_f1", "macro F1"),
                 ("f1_neutral", "neutral F1"))
SELECT_METRICS = ("weighted_f1", "macro_f1", "f1_neutral", "accuracy")


def build_parser() -> cli.ArgumentParser:
    from msa.augment import MODES
    from msa.captioning import add_captioner_args
    from msa.settings import add_resume_arg

    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0] + "\n\n" + "\n\n".join(__doc__.split("\n\n")[1:]))
    cli.add_data_args(p)
    g = p.add_argument_group("start and mining")
    g.add_argument("--phase3-dir", type=Path, default=DEFAULT_PHASE3,
                   help="phase 3's results folder (best.json, runs/, best/)")
    g.add_argument("--init", default="per-seed", choices=["per-seed", "best"],
                   help="fine-tune, for each seed, phase 3's run of the selected loss x sampler with that seed "
                        "(per-seed: a paired before/after comparison) or phase3 best/ for every seed")
    g.add_argument("--neutral-threshold", type=cli.fraction, default=0.7,
                   help="a true-neutral training post is hard when its neutral probability is below this")
    g.add_argument("--sample-ratio", type=cli.open_fraction, default=1.0,
                   help="share of the hard samples that are captioned and used (seeded random draw)")
    g.add_argument("--max-hard", type=cli.non_negative_int, default=0,
                   help="at most this many hard samples per seed (0: no cap)")
    g.add_argument("--modes", default="none,extra,append,both",
                   help=f"comma-separated augmentation modes to fine-tune, from {', '.join(MODES)} (none: the "
                        "same fine-tuning without captions, the control)")
    add_captioner_args(p)
    t = p.add_argument_group("fine-tuning (everything else as phase 3's selected run)")
    t.add_argument("--lr-scale", type=cli.positive_float, default=0.1,
                   help="fine-tuning learning rate = phase 3's learning rate x this (unless --learning-rate)")
    t.add_argument("--learning-rate", type=cli.positive_float, default=None, help="fine-tuning learning rate")
    t.add_argument("--num-epochs", type=cli.positive_int, default=10, help="maximum fine-tuning epochs")
    t.add_argument("--patience", type=cli.non_negative_int, default=3,
                   help="stop after this many epochs without a better "
                   "validation weighted F1 (0 = never)")
    t.add_argument("--warmup-ratio", type=cli.fraction, default=0.0, help="share of fine-tuning steps with warm-up")
    t.add_argument("--seeds", default=None, help="comma-separated seeds (default: phase 3's)")
    t.add_argument("--side-features", default=None, metavar="LIST",
                   help="numeric side features (msa.side): fine-tuning keeps those phase 3's checkpoint was trained "
                        "with (recorded in it, computed here the same way); given, the flag must name the same ones")
    t.add_argument("--select-metric", default="weighted_f1", choices=SELECT_METRICS,
                   help="validation metric that picks the best mode (mean over seeds) and its best seed")
    t.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"], help="Accelerate mixed precision")
    add_resume_arg(t)
    o = p.add_argument_group("execution and output")
    o.add_argument("--jobs", type=cli.positive_int, default=2,
                   help="fine-tuning processes in parallel (one torch thread each); 1 = in this process")
    o.add_argument("--cache-dir", type=Path, default=cli.CACHE_ROOT / "features", help="feature cache folder")
    o.add_argument("--feature-batch-size", type=cli.positive_int, default=32, help="batch size of the frozen backbones")
    o.add_argument("--gallery", type=cli.non_negative_int, default=6,
                   help="hard samples shown in figures/hard_samples.png")
    o.add_argument("--results-dir", type=Path, default=PHASE_DIR / "results", help="where tables and runs go")
    o.add_argument("--figures-dir", type=Path, default=PHASE_DIR / "figures", help="where the figures go")
    stamp.add_force_arg(o)
    o.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


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


# ----------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    import numpy as np
    import pandas as pd

    from msa import side as side_mod
    from msa.augment import MODES, augment_features, index_frame, mine_hard, train_rows
    from msa.captioning import build_captioner, items_from_data_dir
    from msa.checkpoint import copy_run_dir, load_checkpoint
    from msa.data import LABELS, read_text
    from msa.experiment import Labelled, RunSpec, labelled_features, load_labelled, run_grid
    from msa.io import write_csv, write_json, write_text
    from msa.metrics import classification_metrics
    from msa.plots import confusion_grid, grouped_bars, hard_samples_figure
    from msa.predict import backbones_for
    from msa.settings import parse_seeds
    from msa.trainer import predict_rows

    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)
    t0 = time.time()
    modes = cli.parse_list(args.modes, MODES, "--modes")
    stamp_path = args.results_dir / "inputs.json"
    inputs = stamp.inputs_of(args, files=stamp.phase0_files(cli.work_dir(args), args.split)
                             + [Path(args.phase3_dir) / "best.json"], code=[Path(__file__)])
    if stamp.check(stamp_path, inputs, args.force, "phase 4"):
        print(f"phase 4: up to date ({args.results_dir}); --force recomputes")
        return 0
    best3 = read_phase3(args.phase3_dir)
    seeds = parse_seeds(args.seeds or ",".join(map(str, best3.get("seeds") or [42, 43, 44])))
    data = load_labelled(cli.work_dir(args), args.split)
    if data.split.sha256 != best3["split_sha256"]:
        raise cli.UserError(f"phase 3 trained on split sha256 {best3['split_sha256'][:12]}, the split "
                            f"{data.split.path} is now {data.split.sha256[:12]}: rerun phase 3 so both phases use "
                            "the same validation posts")
    data_dir = Path(args.data_root) / "data"
    starts = start_checkpoints(best3, args.phase3_dir, seeds, args.init)

    # the features the phase-3 models were trained on (backbone weights checked against the checkpoint)
    _, ckpt_cfg = load_checkpoint(starts[seeds[0]])
    tb, ib = backbones_for(ckpt_cfg)
    token_mods = list(ckpt_cfg.get("token_modalities", []))
    side_mod.check_flag(args.side_features, ckpt_cfg, f"phase 3's checkpoint {starts[seeds[0]]}")
    fs = labelled_features(data_dir, data.guids, tb, ib, args.cache_dir, token_mods, args.feature_batch_size)
    fs = side_mod.attach(fs, side_mod.for_checkpoint(ckpt_cfg, data.guids, data_dir, args.cache_dir))
    train_rows_base = list(data.train_idx)
    val_guids = sorted(data.guids[i] for i in data.val_idx)

    # 1. phase 3 on validation (the "before" row) and mining on the training split, per seed
    before, hard_frames, hard_by_seed = [], [], {}
    for seed, ckpt in starts.items():
        model, cfg = load_checkpoint(ckpt)
        if cfg.get("backbones") != ckpt_cfg.get("backbones"):
            raise cli.UserError(f"{ckpt} was trained on other backbones than {starts[seeds[0]]}")
        val_p = predict_rows(model, fs, data.val_idx, token_mods)
        m = classification_metrics(data.labels[data.val_idx], val_p.argmax(1), val_p, LABELS)
        run_metrics = ckpt.parent / "metrics.json"
        if run_metrics.is_file():
            saved = json.loads(run_metrics.read_text(encoding="utf-8"))
            if abs(float(saved.get("weighted_f1", m["weighted_f1"])) - m["weighted_f1"]) > 1e-6:
                log.warning("%s: validation weighted F1 %.4f now, %.4f when phase 3 saved it (features changed?)",
                            ckpt, m["weighted_f1"], float(saved["weighted_f1"]))
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
    hard_all = pd.concat(hard_frames, ignore_index=True)

    # 2. captions for every selected hard post of any seed (cached; failures recorded, never fatal)
    wanted = sorted({r for rows in hard_by_seed.values() for r in rows})
    failures_path = args.results_dir / "caption_failures.jsonl"
    captions: dict[int, str] = {}
    cap_rows = []
    if wanted and any(mode != "none" for mode in modes):
        captioner = build_captioner(args, ib, API_KEY, failures_path)
        results = captioner.caption(items_from_data_dir(data_dir, [data.guids[r] for r in wanted]))
        for r, res in zip(wanted, results):
            if res.ok:
                captions[r] = " ".join(res.caption.split())
            cap_rows.append({"guid": data.guids[r], "caption": res.caption or "", "source": res.source,
                             "error": res.error or ""})
        failed = len(wanted) - len(captions)
        log.info("captions: %d of %d hard posts captioned by %s%s", len(captions), len(wanted), captioner.name,
                 f"; {failed} failed (see {failures_path})" if failed else "")
        if not captions:
            log.warning("no caption succeeded: the caption modes train on the unaugmented split")
    write_csv(args.results_dir / "captions.csv", pd.DataFrame(cap_rows, columns=["guid", "caption", "source",
                                                                                  "error"]))
    hard_all["caption"] = [captions.get(int(r), "") for r in hard_all["row"]]
    write_csv(args.results_dir / "hard_samples.csv", hard_all.drop(columns=["row"]))

    # 3. the augmented feature rows and one training index per mode and seed
    aug = augment_features(fs, data.labels, captions, data_dir, tb, args.cache_dir, args.feature_batch_size)
    aug_data = Labelled(aug.fs.guids, aug.labels, data.split, train_rows_base, list(data.val_idx))
    base = dict(best3["settings"])
    lr = args.learning_rate if args.learning_rate is not None else float(base["learning_rate"]) * args.lr_scale
    ft = {**base, "learning_rate": lr, "num_epochs": args.num_epochs, "patience": args.patience,
          "warmup_ratio": args.warmup_ratio}
    record = cli.args_record(args)
    record |= {"phase3": {"method": best3["method"], "best_json": str(Path(args.phase3_dir) / "best.json")},
               "fine_tuning": ft, "captioned": len(captions)}
    specs = []
    for mode in modes:
        for seed in seeds:
            rows = train_rows(mode, train_rows_base, hard_by_seed[seed], aug)
            run_dir = args.results_dir / "runs" / f"{mode}-s{seed}"
            write_csv(run_dir / "train_index.csv", index_frame(rows, aug, data_dir))
            specs.append(RunSpec(run_dir, ft, seed, loss_kw=best3["loss_kw"], light=False, tag=mode,
                                 mixed_precision=args.mixed_precision, init_from=starts[seed], train_idx=rows,
                                 resume=args.resume))
    results = run_grid(specs, aug.fs, aug_data, jobs=args.jobs, record=record, desc="phase 4 mode x seed")

    # 4. the same validation posts, checked run by run
    for sp in specs:
        got = sorted(pd.read_csv(sp.run_dir / "val_predictions.csv", dtype=str)["guid"])
        if got != val_guids:
            raise RuntimeError(f"{sp.run_dir} was validated on other posts than phase 3")

    after = [{"mode": sp.tag, "seed": sp.seed, "n_train": len(sp.train_idx or []),
              "n_hard": 0 if sp.tag == "none" else sum(r in captions for r in hard_by_seed[sp.seed]),
              **{k: v for k, v in r.items() if k not in ("tag", "seed", "labels")}}
             for sp, r in zip(specs, results)]
    runs = pd.DataFrame(before + after)
    write_csv(args.results_dir / "runs.csv", runs.drop(columns=["confusion_matrix"]))
    table = summarise(runs, ["phase 3"] + modes)
    write_csv(args.results_dir / "summary.csv", table.reset_index())
    changes = paired_changes(runs, modes)

    metric = args.select_metric
    best_mode = str(table.loc[modes, f"{metric}_mean"].idxmax())
    cand = runs[runs["mode"] == best_mode]
    best_row = cand.loc[cand[metric].idxmax()]
    best_dir = copy_run_dir(Path(best_row["run_dir"]), args.results_dir / "best")
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
    write_json(args.results_dir / "best.json", best)

    n_hard = {s: int((hard_all["seed"] == s).sum()) for s in seeds}
    n_sel = {s: len(v) for s, v in hard_by_seed.items()}
    captioner_name = args.captioner if args.captioner == "imagenet" else f"openai ({args.vlm_model})"
    notes = [f"Started from phase 3's `{best3['method']}` ({args.init} checkpoints); captioner {captioner_name}; "
             f"fine-tuning lr {lr:.3g}, at most {args.num_epochs} epochs, patience {args.patience}.",
             "",
             "Hard training posts per seed (misclassified, or true neutral with p(neutral) < "
             f"{args.neutral_threshold}): " + ", ".join(f"seed {s}: {n_hard[s]} hard, {n_sel[s]} selected"
                                                         for s in seeds)
             + f"; {len(captions)} of {len(wanted)} selected posts captioned"
             + (f" ({len(wanted) - len(captions)} failed)" if len(wanted) > len(captions) else "") + ".",
             "", f"Validation: {len(val_guids)} posts, identical to phase 3's for every run."]
    header = (f"# Phase 4: hard samples + caption augmentation (split `{data.split.name}`, {len(val_guids)} "
              f"validation posts, seeds {', '.join(map(str, seeds))}, {len(specs)} fine-tuning runs, "
              f"{time.time() - t0:.0f} s)")
    md = markdown(table, changes, header, notes, best, metric)
    write_text(args.results_dir / "summary.md", md)
    write_json(args.results_dir / "summary.json",
               {"table": table.reset_index().to_dict(orient="records"), "paired_changes": changes, "best": best,
                "hard_samples": {"per_seed": n_hard, "selected": n_sel, "captioned": len(captions),
                                 "caption_failures": len(wanted) - len(captions)},
                "captioner": captioner_name, "modes": modes, "seeds": seeds, "fine_tuning": ft,
                "same_validation_guids": True, "validation_posts": len(val_guids),
                "phase3": {k: best3[k] for k in ("method", "checkpoint", "split_sha256")},
                "seconds": round(time.time() - t0, 1)})

    # figures
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

    stamp.write(stamp_path, inputs, [args.results_dir / "best.json", args.results_dir / "summary.md",
                                     best_dir / "checkpoint" / "model.safetensors"])
    print(md)
    print(f"best: {best_mode} seed {best['seed']} ({metric} {best['value']:.4f}) -> {best_dir} (predict_test.py "
          f"uses it); tables -> {args.results_dir}, figures -> {args.figures_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
