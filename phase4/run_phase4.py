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

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from msa import cli, stamp
from msa.augment_stage import INITS, SELECT_METRICS
from msa.config import add_options, option
from msa.settings import MIXED_PRECISION_HELP, MIXED_PRECISIONS

#: Your vision-language API key may go here (environment variables VLM_API_KEY, DASHSCOPE_API_KEY, OPENAI_API_KEY
#: take precedence). It is only sent to --vlm-base-url and never written to logs, caches or results.
API_KEY = ""

PHASE_DIR = Path(__file__).resolve().parent
DEFAULT_PHASE3 = PHASE_DIR.parent / "phase3" / "results"


def _modes_help() -> str:
    from msa.augment import MODES

    return (f"comma-separated augmentation modes to fine-tune, from {', '.join(MODES)} (none: the same fine-tuning "
            "without captions, the control)")


@dataclass(frozen=True)
class Mining:
    """Where fine-tuning starts and which training posts are hard."""

    phase3_dir: Path = option(DEFAULT_PHASE3, "phase 3's results folder (best.json, runs/, best/)")
    init: str = option("per-seed", "fine-tune, for each seed, phase 3's run of the selected loss x sampler with "
                       "that seed (per-seed: a paired before/after comparison) or phase3 best/ for every seed",
                       choices=INITS)
    neutral_threshold: float = option(0.7, "a true-neutral training post is hard when its neutral probability is "
                                      "below this", type=cli.fraction)
    sample_ratio: float = option(1.0, "share of the hard samples that are captioned and used (seeded random draw)",
                                 type=cli.open_fraction)
    max_hard: int = option(0, "at most this many hard samples per seed (0: no cap)", type=cli.non_negative_int)
    modes: str = option("none,extra,append,both", _modes_help)


@dataclass(frozen=True)
class FineTuning:
    """The fine-tuning flags (everything else as phase 3's selected run)."""

    lr_scale: float = option(0.1, "fine-tuning learning rate = phase 3's learning rate x this (unless "
                             "--learning-rate)", type=cli.positive_float)
    learning_rate: float | None = option(None, "fine-tuning learning rate", type=cli.positive_float)
    num_epochs: int = option(10, "maximum fine-tuning epochs", type=cli.positive_int)
    patience: int = option(3, "stop after this many epochs without a better validation weighted F1 (0 = never)",
                           type=cli.non_negative_int)
    warmup_ratio: float = option(0.0, "share of fine-tuning steps with warm-up", type=cli.fraction)
    seeds: str | None = option(None, "comma-separated seeds (default: phase 3's)")
    side_features: str | None = option(None, "numeric side features (msa.side): fine-tuning keeps those phase 3's "
                                       "checkpoint was trained with (recorded in it, computed here the same way); "
                                       "given, the flag must name the same ones", metavar="LIST")
    select_metric: str = option("weighted_f1", "validation metric that picks the best mode (mean over seeds) and "
                                "its best seed", choices=SELECT_METRICS)
    mixed_precision: str = option("auto", MIXED_PRECISION_HELP, choices=MIXED_PRECISIONS)


@dataclass(frozen=True)
class Output:
    """Execution and output."""

    jobs: int = option(2, "fine-tuning processes in parallel (one torch thread each); 1 = in this process",
                       type=cli.positive_int)
    cache_dir: Path = option(cli.CACHE_ROOT / "features", "feature cache folder")
    feature_batch_size: int = option(32, "batch size of the frozen backbones", type=cli.positive_int)
    gallery: int = option(6, "hard samples shown in figures/hard_samples.png", type=cli.non_negative_int)
    results_dir: Path = option(PHASE_DIR / "results", "where tables and runs go")
    figures_dir: Path = option(PHASE_DIR / "figures", "where the figures go")


def build_parser() -> cli.ArgumentParser:
    from msa.captioning import add_captioner_args
    from msa.settings import add_resume_arg

    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0] + "\n\n" + "\n\n".join(__doc__.split("\n\n")[1:]))
    cli.add_data_args(p)
    add_options(p, Mining, group="start and mining")
    add_captioner_args(p)
    tuning = "fine-tuning (everything else as phase 3's selected run)"
    add_resume_arg(add_options(p, FineTuning, group=tuning)[tuning])
    o = add_options(p, Output, group="execution and output")["execution and output"]
    stamp.add_force_arg(o)
    o.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv=None) -> int:
    from msa import augment_stage as stage

    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)
    t0 = time.time()
    stamp_path = args.results_dir / "inputs.json"
    inputs = stamp.inputs_of(args, files=stamp.phase0_files(cli.work_dir(args), args.split)
                             + [Path(args.phase3_dir) / "best.json"], code=[Path(__file__)])
    if stamp.check(stamp_path, inputs, args.force, "phase 4"):
        print(f"phase 4: up to date ({args.results_dir}); --force recomputes")
        return 0
    from msa.augment import MODES  # torch: after the check (arguments that match a finished run's are valid)

    modes = cli.parse_list(args.modes, MODES, "--modes")
    md, best, best_dir = stage.run(args, modes, API_KEY, t0)
    stamp.write(stamp_path, inputs, [args.results_dir / "best.json", args.results_dir / "summary.md",
                                     best_dir / "checkpoint" / "model.safetensors"])
    print(md)
    print(f"best: {best['mode']} seed {best['seed']} ({args.select_metric} {best['value']:.4f}) -> {best_dir} "
          f"(predict_test.py uses it); tables -> {args.results_dir}, figures -> {args.figures_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
