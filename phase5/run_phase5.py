"""Phase 5: modality ablation: evaluates the best model on the validation split with its text or image features
replaced (by zeros, and by the training-split mean) and retrains text-only, image-only and text+image models with
its recipe, reading the checkpoint, its run folder's config.json, phase 0's split and the feature cache, and
writing tables to phase5/results/ and figures to phase5/figures/.

Run from the repository root after phase 0 and a training phase (phase 4, else 3, else 1):

    python phase5/run_phase5.py --data-root dataset/
    python phase5/run_phase5.py --data-root ../shared/mvsa --checkpoint phase3/results/runs/ce-none-s42/checkpoint \\
        --seeds 42,43,44 --jobs 2

(a) Masking. The trained model is evaluated with one modality's input features (pooled vector and, for a token
    modality, the token sequence) replaced by zeros, and by the mean of that modality's training-split features
    (for tokens: one mean token vector, mask True). Zeros are far outside what the model saw in training; the
    mean is an uninformative input from the training distribution, so the difference between the two rows is
    the part of the drop that comes from distribution shift rather than from the missing information.
    Mean and std over seeds: when <phase>/results/best.json (next to the checkpoint's run folder) lists
    "seed_runs" (run folders with checkpoint/), every one of them is evaluated; otherwise the one checkpoint
    (n = 1, std 0, said in the table).
(b) Retrained. Text-only, image-only and text+image models trained from scratch with the recipe of the
    checkpoint's run (config.json next to checkpoint/: "train", "fusion", "loss", "loss_kw",
    "arguments" -> "resolved"; hidden size and dropout from the checkpoint) and its phase's seeds, on the same
    split and cached features. For a fine-tuned model (its config names "init_from", as phase 4's do) that is
    the recipe of the run the fine-tuning started from, which trained the weights from scratch (--recipe-run
    picks another run folder). A fusion that needs two modalities (cross_attention) is replaced by concat for
    the one-modality models, and the table says so. --skip-retrain leaves (b) out.
A model with numeric side features (--side-features, msa.side) has them ablated as a third modality: masked by
    zeros and by their training-split mean in (a), and in (b) a text + image + side model (the recipe) next to the
    text + image model retrained without them.

Reads  the checkpoint (default: phase4/results/best/checkpoint, else phase3's, else phase1's, else the newest
       phase*/results/*/checkpoint), its run folder's config.json (and that of the run it was fine-tuned
       from) and <phase>/results/best.json,
       <work-dir>/train_cleaned.txt and splits/<split>.csv (phase 0), the feature cache
Writes phase5/results/ablation.csv, ablation.md, ablation.json (one row per ablation: mean and std over seeds
       of accuracy, weighted precision, weighted recall, weighted F1, macro F1, neutral F1);
       masking_runs.csv (one row per checkpoint x condition), masking_predictions.csv (guid, label, pred,
       probabilities per checkpoint x condition); retrained_runs.csv and runs/<text|image|multimodal>-s<seed>/
       run folders; phase5/figures/ablation_radar.png, ablation_bars.png
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from msa import cli, stamp
from msa.ablation_stage import DEFAULT_SEEDS
from msa.config import add_output_dirs

PHASE_DIR = Path(__file__).resolve().parent


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0] + "\n\n" + "\n\n".join(__doc__.split("\n\n")[1:]))
    cli.add_data_args(p)
    from msa.settings import add_resume_arg

    g = p.add_argument_group("phase 5 ablation")
    g.add_argument("--checkpoint", type=Path, default=None,
                   help="checkpoint folder (or its run folder) of the model to ablate (default: the first of "
                        "phase4/, phase3/, phase1/results/best/checkpoint that exists, else the newest run's); its "
                        "run folder's config.json gives the recipe of (b), <phase>/results/best.json the seed runs "
                        "of (a)")
    g.add_argument("--seeds", default=None,
                   help="comma-separated seeds of the retrained models (default: the seeds of the model's phase: "
                        f"best.json's seed runs, else the run's --seeds, else {DEFAULT_SEEDS})")
    add_resume_arg(g)
    g.add_argument("--recipe-run", type=Path, default=None,
                   help="run folder whose config.json is the recipe of the retrained models (default: the "
                        "checkpoint's run folder; for a fine-tuned model, the run its fine-tuning started from)")
    g.add_argument("--skip-retrain", action="store_true",
                   help="only the masking ablation (a); no retrained models")
    o = p.add_argument_group("execution and output")
    o.add_argument("--jobs", type=cli.positive_int, default=2,
                   help="training processes in parallel (one torch thread each); 1 = in this process")
    o.add_argument("--cache-dir", type=Path, default=cli.CACHE_ROOT / "features", help="feature cache folder")
    o.add_argument("--feature-batch-size", type=cli.positive_int, default=32, help="batch size of the frozen backbones")
    add_output_dirs(o, PHASE_DIR, "where tables and runs go", "where the figures go")
    stamp.add_force_arg(o)
    o.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv=None) -> int:
    from msa import ablation_stage as stage

    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)
    t0 = time.time()
    if args.seeds is not None:
        from msa.settings import parse_seeds

        parse_seeds(args.seeds)  # a bad --seeds is an error before anything runs
    model = stage.find_model(args.checkpoint)
    stamp_path = args.results_dir / "inputs.json"
    stamp_inputs = stamp.inputs_of(args, files=stamp.phase0_files(cli.work_dir(args), args.split)
                                   + model.input_files(), code=[Path(__file__)])
    if stamp.check(stamp_path, stamp_inputs, args.force, "phase 5"):
        print(f"phase 5: up to date ({args.results_dir}); --force recomputes")
        return 0
    from msa.experiment import load_labelled  # torch, pandas: after the check
    from msa.io import write_csv, write_json, write_text

    data = load_labelled(cli.work_dir(args), args.split)
    plan = stage.make_plan(model, data, args.skip_retrain, args.recipe_run, args.seeds)
    from msa.workers import prestart

    prestart(1 if args.skip_retrain else args.jobs)  # the workers' fork server imports meanwhile (msa.workers)
    fs = stage.ablation_features(plan, data, Path(args.data_root) / "data", args.cache_dir, args.feature_batch_size)

    # (a) masking
    masking, predictions = stage.masking_runs(plan, fs, data)
    write_csv(args.results_dir / "masking_runs.csv", masking)
    write_csv(args.results_dir / "masking_predictions.csv", predictions)
    rows = stage.masking_rows(plan, masking)
    # (b) retrained from scratch with the model's recipe
    if plan.recipe is not None:
        retrained, more = stage.retrain(plan, fs, data, args.results_dir / "runs", cli.args_record(args),
                                        jobs=args.jobs, resume=args.resume)
        rows += more
        write_csv(args.results_dir / "retrained_runs.csv", retrained)

    table = stage.summary_table(rows)
    write_csv(args.results_dir / "ablation.csv", table)
    notes = stage.notes(plan, data, masking, args.results_dir / "runs")
    md = stage.markdown(table, stage.header(plan, data), notes)
    write_text(args.results_dir / "ablation.md", md)
    write_json(args.results_dir / "ablation.json", {**stage.summary_json(plan, data, table, notes),
                                                    "seconds": round(time.time() - t0, 1)})
    stage.figures(plan, table, len(data.val_idx), args.figures_dir)

    stamp.write(stamp_path, stamp_inputs, [args.results_dir / "ablation.csv", args.results_dir / "ablation.md"])
    print(md)
    print(f"tables -> {args.results_dir}, figures -> {args.figures_dir} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
