"""Phase 1: trains the baseline (frozen text + image backbones, concat fusion, cross-entropy) on phase 0's
cleaned index and split, and writes run folders, a summary and best/ to phase1/results/.

Run from the repository root after phase 0:

    python phase1/main.py --data-root dataset/
    python phase1/main.py --name Phase1_Baseline --feature_fusion concat --loss_type ce \\
        --learning_rate 1e-4 --dropout 0.3 --num_epochs 30 --seeds 42,43,44
    python phase1/main.py --preset configs/seed_bert_swinv2.json      # the seed's BERT + SwinV2 folders

Reads  <work-dir>/train_cleaned.txt and splits/<split>.csv (phase 0), <data-root>/data/* (through the
       feature cache under --cache-dir)
Writes phase1/results/<name>-s<seed>/ per seed, and phase1/results/best/ (a copy of the seed with the best
       validation weighted F1): config.json, history.csv, metrics.json, val_predictions.csv,
       checkpoint/ (model.safetensors + config.json), figures/ (training curves, confusion matrix);
       phase1/results/<name>_summary.json and .md (mean and std over seeds, and a logistic-regression probe
       on the same cached features as a reference); phase1/figures/<name>_*.png
"""

from __future__ import annotations

import sys
from pathlib import Path

from msa import cli, stamp
from msa.config import add_output_dirs

PHASE_DIR = Path(__file__).resolve().parent


def build_parser() -> cli.ArgumentParser:
    from msa.settings import add_model_args, add_training_args

    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0] + "\n\n" + "\n\n".join(__doc__.split("\n\n")[1:]))
    cli.add_data_args(p)
    p.add_argument("--name", default="Phase1_Baseline", help="run name (folder prefix under --results-dir)")
    add_model_args(p)
    add_training_args(p)
    o = p.add_argument_group("features and output")
    o.add_argument("--cache-dir", type=Path, default=cli.CACHE_ROOT / "features", help="feature cache folder")
    o.add_argument("--feature-batch-size", type=cli.positive_int, default=32, help="batch size of the frozen backbones")
    add_output_dirs(o, PHASE_DIR, "where run folders go", "where summary figures go")
    o.add_argument("--no-probe", action="store_true", help="skip the logistic-regression reference probe")
    stamp.add_force_arg(o)
    o.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv=None) -> int:
    from msa import baseline as stage
    from msa.settings import parse_seeds, resolve
    from msa.side import csv_files as side_csv_files

    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)
    s = resolve(args)
    stamp_path = args.results_dir / f"inputs_{args.name}.json"
    inputs = stamp.inputs_of(args, files=stamp.phase0_files(cli.work_dir(args), args.split)
                             + ([Path(args.preset)] if args.preset else []) + side_csv_files(s["side_features"]),
                             code=[Path(__file__)])
    if stamp.check(stamp_path, inputs, args.force, "phase 1"):
        print(f"phase 1: up to date ({args.results_dir}); --force recomputes")
        return 0
    seeds = parse_seeds(args.seeds)
    md, best_dir = stage.run(args, s, seeds)
    stamp.write(stamp_path, inputs, [md, best_dir / "checkpoint" / "model.safetensors"])
    print(f"summary over {len(seeds)} seed(s) -> {md}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
