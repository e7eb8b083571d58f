"""Phase 2a: trains every fusion of the registry x several seeds on phase 0's split and writes the comparison
and best_config.json to phase2/results/ (figure in phase2/figures/).

Run from the repository root after phase 0 (phase 1 is not needed; the features come from the same cache, and
phase 1's runs, when there, are copied instead of trained again where they are the grid's run: --reuse-runs):

    python phase2/run_phase2.py --data-root dataset/
    python phase2/run_phase2.py --data-root ../shared/mvsa --seeds 42,43,44 --jobs 2

Reads  <work-dir>/train_cleaned.txt, splits/<split>.csv, the feature cache (computed on first use)
Writes phase2/results/runs/<fusion>-s<seed>/ (config, history, metrics, val predictions; no checkpoints),
       phase2/results/summary.csv and summary.md (accuracy, weighted F1, macro F1, neutral F1, ECE: mean and
       std over seeds), phase2/figures/fusions.png (bar chart with std error bars), and
       phase2/results/best_config.json: the fusion with the best mean validation weighted F1 and every setting
       it was trained with (phase 3 starts from it; phase2/search_hyperparam.py refines its hyper-parameters).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from msa import cli, stamp
from msa.config import add_output_dirs

PHASE_DIR = Path(__file__).resolve().parent
DEFAULT_REUSE = PHASE_DIR.parent / "phase1" / "results"


def _fusions_help() -> str:  # shown by --help only: the registry (torch) is not read to build the parser
    from msa.fusions import FUSIONS

    return f"comma-separated fusions to compare, from {', '.join(FUSIONS)} (default: the whole registry)"


def build_parser() -> cli.ArgumentParser:
    from msa.settings import add_model_args, add_training_args

    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0] + "\n\n" + "\n\n".join(__doc__.split("\n\n")[1:]))
    cli.add_data_args(p)
    p.add_argument("--fusions", default=None, help=_fusions_help)
    add_model_args(p, fusion=False)
    add_training_args(p, seeds="42,43,44", resume=False)
    o = p.add_argument_group("execution and output")
    o.add_argument("--jobs", type=cli.positive_int, default=2,
                   help="training processes in parallel (one torch thread each)")
    o.add_argument("--timeout", type=cli.positive_float, default=None,
                   help="time budget in seconds for the grid: runs go seed by seed (every fusion's first seed "
                        "before any second one) and none starts after the budget; the table says what was skipped "
                        "(default: none, every run)")
    o.add_argument("--reuse-runs", type=cli.optional_path, default=DEFAULT_REUSE, metavar="DIR",
                   help="finished runs there (phase 1's: its baseline is the grid's concat with the default "
                        "settings) whose config equals a grid run's but for the arguments are copied, not trained "
                        "again; the same weights and metrics, since training is deterministic on the CPU "
                        "('none': train every run)")
    o.add_argument("--cache-dir", type=Path, default=cli.CACHE_ROOT / "features", help="feature cache folder")
    o.add_argument("--feature-batch-size", type=cli.positive_int, default=32, help="batch size of the frozen backbones")
    add_output_dirs(o, PHASE_DIR, "where tables and runs go", "where the chart goes")
    stamp.add_force_arg(o)
    o.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv=None) -> int:
    from msa import fusion_search as stage
    from msa.settings import parse_seeds, resolve
    from msa.side import csv_files as side_csv_files

    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)
    t0 = time.time()
    seeds = parse_seeds(args.seeds)
    s = resolve(args)
    stamp_path = args.results_dir / "inputs_fusions.json"
    inputs = stamp.inputs_of(args, files=stamp.phase0_files(cli.work_dir(args), args.split)
                             + ([Path(args.preset)] if args.preset else []) + side_csv_files(s["side_features"]),
                             code=[Path(__file__)])
    if stamp.check(stamp_path, inputs, args.force, "phase 2 fusion search"):
        print(f"phase 2 fusion search: up to date ({args.results_dir}); --force recomputes")
        return 0
    # the heavy imports (torch, pandas, matplotlib) and the registry checks come after the up-to-date check:
    # a stamp is only written by a finished run, so arguments that match one are valid
    from msa.experiment import load_labelled, run_grid
    from msa.io import write_csv, write_json, write_text
    from msa.plots import grouped_bars
    from msa.workers import prestart

    prestart(args.jobs)  # the workers' fork server imports meanwhile (msa.workers)
    fusions = stage.parse_fusions(args.fusions)
    data = load_labelled(cli.work_dir(args), args.split)
    fs = stage.grid_features(s, fusions, data, Path(args.data_root) / "data", args.cache_dir,
                             args.feature_batch_size)
    record = cli.args_record(args) | {"resolved": s}
    deadline = time.time() + args.timeout if args.timeout else None
    specs = stage.grid_specs(s, fusions, seeds, args.results_dir / "runs", args.mixed_precision, deadline,
                             reuse_from=args.reuse_runs)
    results = run_grid(specs, fs, data, jobs=args.jobs, record=record, desc="phase 2 fusion x seed")
    done = [r for r in results if not r.get("skipped")]
    ran = [f for f in fusions if any(r["tag"] == f for r in done)]
    table = stage.summarise(done).loc[ran]
    table.index.name = "fusion"
    write_csv(args.results_dir / "summary.csv", table.reset_index())
    grid_seconds = time.time() - t0
    budget = stage.grid_budget(args.timeout, specs, done, fusions, ran)
    budget["note"] += stage.copied_note(done)
    title = (f"# Phase 2: fusion search (split `{data.split.name}`, seeds {', '.join(map(str, seeds))}, "
             f"{len(done)} runs in {grid_seconds:.0f} s)")
    write_text(args.results_dir / "summary.md", stage.markdown_table(table, title) + budget["note"])
    grouped_bars(table, [("weighted_f1", "weighted F1"), ("macro_f1", "macro F1"), ("f1_neutral", "neutral F1")],
                 args.figures_dir / "fusions.png", title=f"Fusions on the validation split (mean ± std, "
                 f"{len(seeds)} seeds)", ylim=(0, 1))
    best = stage.best_config(table, s, ran, seeds, data, fs.backbones)
    best["grid_budget"] = {k: v for k, v in budget.items() if k != "note"}
    best["grid_budget"]["runs_copied"] = [r["run_dir"] for r in done if r.get("same_as")]
    write_json(args.results_dir / "best_config.json", best)
    stamp.write(stamp_path, inputs, [args.results_dir / "summary.csv"])
    print(stage.markdown_table(table, f"phase 2: {len(done)} runs in {grid_seconds:.1f}s") + budget["note"])
    print(f"best fusion: {best['settings']['feature_fusion']} -> {args.results_dir / 'best_config.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
