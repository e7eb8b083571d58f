"""Phase 3: trains phase 2's best configuration with every class-imbalance loss (ce, weighted_ce, focal, acb),
with and without a class-balanced sampler, and writes runs, tables and best/ to phase3/results/.

Run from the repository root after phase 0 (and, ideally, phase 2, whose best configuration it starts from):

    python phase3/run_phase3.py --data-root dataset/
    python phase3/run_phase3.py --data-root ../shared/mvsa --losses ce,acb --samplers none,balanced \\
        --seeds 42,43,44 --acb-beta 0.1 --select-metric f1_neutral

Starts from phase2/results/best_config.json (--best-config): its "settings" (fusion, hyper-parameters,
backbones) are the base that --preset and explicit flags override. Without that file (phase 2 not run) it
starts from the built-in defaults and says so in the log and in every output. Then trains that configuration
with each loss of --losses, each sampler of --samplers ("none": shuffled epochs; "balanced": every class drawn
equally often, with replacement) and each seed, on the same persisted split and cached features.

Reads  <work-dir>/train_cleaned.txt, splits/<split>.csv (phase 0), the feature cache, --best-config
Writes phase3/results/runs/<loss>-<sampler>-s<seed>/ (config, history, metrics, val predictions, checkpoint/
       with loss.safetensors for a loss with state (ACB's running difficulty), figures/);
       phase3/results/runs.csv (one row per run), summary.csv, summary.md, summary.json (one row per loss x
       sampler: mean and std over seeds of accuracy, weighted F1, macro F1, neutral F1, ECE; the configuration
       phase 3 started from; each loss against ce on neutral F1);
       phase3/results/best/ (a copy of the best run: the loss x sampler with the best mean --select-metric, and
       within it the best seed; phase 4 starts from best/checkpoint) and best.json naming it;
       phase3/figures/losses.png (weighted and neutral F1, std error bars), reliability.png (one reliability
       diagram per loss x sampler, validation predictions of all seeds pooled), confusion.png (confusion
       matrices summed over seeds)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from msa import cli, stamp
from msa.config import add_output_dirs
from msa.imbalance import DEFAULT_SAMPLERS, SELECT_METRICS

PHASE_DIR = Path(__file__).resolve().parent
DEFAULT_BEST_CONFIG = PHASE_DIR.parent / "phase2" / "results" / "best_config.json"


def _losses_help() -> str:  # --help only: the registry (torch) is not read to build the parser
    from msa.losses import LOSSES

    return f"comma-separated losses to compare, from {', '.join(LOSSES)} (default: all of them)"


def build_parser() -> cli.ArgumentParser:
    from msa.imbalance import add_loss_args
    from msa.settings import add_model_args, add_training_args

    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0] + "\n\n" + "\n\n".join(__doc__.split("\n\n")[1:]))
    cli.add_data_args(p)
    g = p.add_argument_group("phase 3 grid")
    g.add_argument("--best-config", type=Path, default=DEFAULT_BEST_CONFIG,
                   help="phase 2's best_config.json; its 'settings' are the starting configuration (missing: "
                        "the built-in defaults, with a warning)")
    g.add_argument("--losses", default=None, help=_losses_help)
    g.add_argument("--samplers", default=DEFAULT_SAMPLERS,
                   help="comma-separated samplers: 'none' (shuffled epochs) and/or 'balanced' (class-balanced "
                        "sampling with replacement)")
    g.add_argument("--select-metric", default="weighted_f1", choices=SELECT_METRICS,
                   help="validation metric that picks the best loss x sampler (mean over seeds) and, within it, "
                        "the seed copied to results/best/")
    add_model_args(p, fusion=True, loss=False)
    add_training_args(p, seeds="42,43,44")
    add_loss_args(p)

    o = p.add_argument_group("execution and output")
    o.add_argument("--jobs", type=cli.positive_int, default=2,
                   help="training processes in parallel (one torch thread each); 1 = in this process")
    o.add_argument("--cache-dir", type=Path, default=cli.CACHE_ROOT / "features", help="feature cache folder")
    o.add_argument("--feature-batch-size", type=cli.positive_int, default=32, help="batch size of the frozen backbones")
    o.add_argument("--reliability-bins", type=cli.positive_int, default=15,
                   help="equal-width confidence bins of the reliability diagrams (the ECE uses 15)")
    add_output_dirs(o, PHASE_DIR, "where tables and runs go", "where the figures go")
    stamp.add_force_arg(o)
    o.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv=None) -> int:
    from msa.settings import parse_seeds

    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)
    t0 = time.time()
    seeds = parse_seeds(args.seeds)
    stamp_path = args.results_dir / "inputs.json"
    inputs = stamp.inputs_of(args, files=stamp.phase0_files(cli.work_dir(args), args.split)
                             + [Path(args.best_config)] + ([Path(args.preset)] if args.preset else []),
                             code=[Path(__file__)])
    if stamp.check(stamp_path, inputs, args.force, "phase 3"):
        print(f"phase 3: up to date ({args.results_dir}); --force recomputes")
        return 0
    # the registries (torch, sklearn) after the check: arguments that match a finished run's are valid
    from msa import imbalance as stage
    from msa.losses import LOSSES
    from msa.trainer import SAMPLERS

    losses = cli.parse_list(args.losses or ",".join(LOSSES), list(LOSSES), "--losses")
    samplers = cli.parse_list(args.samplers, list(SAMPLERS), "--samplers")
    md, best = stage.run(args, losses, samplers, seeds, t0)
    best_dir = Path(best["copied_to"])
    stamp.write(stamp_path, inputs, [args.results_dir / "best.json", args.results_dir / "summary.md",
                                     best_dir / "checkpoint" / "model.safetensors"])
    print(md)
    print(f"best: {best['method']} seed {best['seed']} ({args.select_metric} {best['value']:.4f}) -> {best_dir} "
          f"(phase 4 starts from its checkpoint); tables -> {args.results_dir}, figures -> {args.figures_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
