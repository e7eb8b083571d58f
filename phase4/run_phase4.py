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

import logging
import sys
import time
from pathlib import Path

from msa import cli, stamp
from msa.augment_stage import SELECT_METRICS

#: Your vision-language API key may go here (environment variables VLM_API_KEY, DASHSCOPE_API_KEY, OPENAI_API_KEY
#: take precedence). It is only sent to --vlm-base-url and never written to logs, caches or results.
API_KEY = ""

log = logging.getLogger("phase4")
PHASE_DIR = Path(__file__).resolve().parent
DEFAULT_PHASE3 = PHASE_DIR.parent / "phase3" / "results"


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


def main(argv=None) -> int:
    import pandas as pd

    from msa import augment_stage as stage
    from msa.augment import MODES, augment_features
    from msa.experiment import Labelled, load_labelled, run_grid
    from msa.io import write_csv, write_json, write_text
    from msa.settings import parse_seeds

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
    best3 = stage.read_phase3(args.phase3_dir)
    seeds = parse_seeds(args.seeds or ",".join(map(str, best3.get("seeds") or [42, 43, 44])))
    data = load_labelled(cli.work_dir(args), args.split)
    if data.split.sha256 != best3["split_sha256"]:
        raise cli.UserError(f"phase 3 trained on split sha256 {best3['split_sha256'][:12]}, the split "
                            f"{data.split.path} is now {data.split.sha256[:12]}: rerun phase 3 so both phases use "
                            "the same validation posts")
    data_dir = Path(args.data_root) / "data"
    starts = stage.start_checkpoints(best3, args.phase3_dir, seeds, args.init)
    fs, tb, ib, token_mods, ckpt_cfg = stage.starting_features(starts, data, args)
    val_guids = sorted(data.guids[i] for i in data.val_idx)

    # 1. phase 3 on validation and mining on the training split; 2. captions of the selected hard posts
    before, hard_all, hard_by_seed = stage.score_and_mine(starts, fs, data, ckpt_cfg, token_mods, args)
    wanted = sorted({r for rows in hard_by_seed.values() for r in rows})
    captions, cap_rows = stage.caption_hard(wanted, data.guids, modes, ib, args, API_KEY,
                                            args.results_dir / "caption_failures.jsonl")
    write_csv(args.results_dir / "captions.csv", pd.DataFrame(cap_rows, columns=["guid", "caption", "source",
                                                                                  "error"]))
    hard_all["caption"] = [captions.get(int(r), "") for r in hard_all["row"]]
    write_csv(args.results_dir / "hard_samples.csv", hard_all.drop(columns=["row"]))

    # 3. the augmented feature rows, one fine-tuning run per mode and seed; 4. the same validation posts
    aug = augment_features(fs, data.labels, captions, data_dir, tb, args.cache_dir, args.feature_batch_size)
    aug_data = Labelled(aug.fs.guids, aug.labels, data.split, list(data.train_idx), list(data.val_idx))
    ft = stage.fine_tuning_settings(best3, args)
    record = cli.args_record(args) | {
        "phase3": {"method": best3["method"], "best_json": str(Path(args.phase3_dir) / "best.json")},
        "fine_tuning": ft, "captioned": len(captions)}
    specs = stage.run_specs(modes, seeds, data, hard_by_seed, aug, ft, best3, starts, args)
    results = run_grid(specs, aug.fs, aug_data, jobs=args.jobs, record=record, desc="phase 4 mode x seed")
    stage.check_same_validation(specs, val_guids)

    runs = pd.DataFrame(before + stage.after_rows(specs, results, hard_by_seed, captions))
    write_csv(args.results_dir / "runs.csv", runs.drop(columns=["confusion_matrix"]))
    table = stage.summarise(runs, ["phase 3"] + modes)
    write_csv(args.results_dir / "summary.csv", table.reset_index())
    changes = stage.paired_changes(runs, modes)
    best, best_dir = stage.select_best(runs, table, modes, seeds, args.select_metric, ft, best3, data,
                                       args.results_dir)
    write_json(args.results_dir / "best.json", best)

    counts = {"per_seed": {s: int((hard_all["seed"] == s).sum()) for s in seeds},
              "selected": {s: len(v) for s, v in hard_by_seed.items()}, "captioned": len(captions),
              "caption_failures": len(wanted) - len(captions)}
    captioner_name = args.captioner if args.captioner == "imagenet" else f"openai ({args.vlm_model})"
    header = (f"# Phase 4: hard samples + caption augmentation (split `{data.split.name}`, {len(val_guids)} "
              f"validation posts, seeds {', '.join(map(str, seeds))}, {len(specs)} fine-tuning runs, "
              f"{time.time() - t0:.0f} s)")
    md = stage.markdown(table, changes, header, notes(best3, args, ft, seeds, counts, len(wanted), len(val_guids),
                                                      captioner_name), best, args.select_metric)
    write_text(args.results_dir / "summary.md", md)
    write_json(args.results_dir / "summary.json",
               {"table": table.reset_index().to_dict(orient="records"), "paired_changes": changes, "best": best,
                "hard_samples": counts, "captioner": captioner_name, "modes": modes, "seeds": seeds,
                "fine_tuning": ft, "same_validation_guids": True, "validation_posts": len(val_guids),
                "phase3": {k: best3[k] for k in ("method", "checkpoint", "split_sha256")},
                "seconds": round(time.time() - t0, 1)})
    write_figures(table, runs, hard_all, best["mode"], seeds, data_dir, captioner_name, args)
    stamp.write(stamp_path, inputs, [args.results_dir / "best.json", args.results_dir / "summary.md",
                                     best_dir / "checkpoint" / "model.safetensors"])
    print(md)
    print(f"best: {best['mode']} seed {best['seed']} ({args.select_metric} {best['value']:.4f}) -> {best_dir} "
          f"(predict_test.py uses it); tables -> {args.results_dir}, figures -> {args.figures_dir}")
    return 0


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


def write_figures(table, runs, hard_all, best_mode: str, seeds: list[int], data_dir: Path, captioner_name: str,
                  args) -> None:
    """comparison.png (phase 3 vs each mode), confusion.png (before/after, seeds summed), hard_samples.png."""
    import numpy as np
    import pandas as pd

    from msa.augment_stage import TABLE_METRICS
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


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
