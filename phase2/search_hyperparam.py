"""Phase 2b: Optuna hyper-parameter search (TPE sampler, median pruning) of the fusion in
phase2/results/best_config.json, which it updates; the study and trial table also go to phase2/results/.

Run from the repository root after phase 0 (and usually after phase2/run_phase2.py, whose best fusion it tunes):

    python phase2/search_hyperparam.py --data-root dataset/ --n-trials 50
    python phase2/search_hyperparam.py --search-fusion --n-trials 100 --jobs 2

The objective is the mean validation weighted F1 over --seeds on the phase-0 split. Hopeless trials are pruned
(median rule): epoch by epoch during the first seed (its best validation weighted F1 so far, from epoch 5 on) and
after each seed but the last (the running mean). The test file is never read. The search is bounded by
--n-trials and, optionally, a time budget (--timeout seconds: no trial starts after it); best_config.json and
search_summary.md record the budget, what stopped the search and what it found.

Storage is any SQLAlchemy database URL (--storage, default SQLite at phase2/results/optuna.db) and the study is
named by --study-name, so an interrupted search resumes where it stopped: rerun the same command. --n-trials is
the number of finished (complete or pruned) trials the study should have in total, so reruns and parallel
workers stop together. Several processes or machines can work on one study: start this script on each with the
same --study-name and a shared database, e.g. --storage postgresql://user:pass@dbhost/optuna (SQLite only for
processes on one machine; --jobs N starts N local processes).

Reads  <work-dir>/train_cleaned.txt, splits/<split>.csv, the feature cache, phase2/results/best_config.json
Writes the study in --storage, phase2/results/best_config.json (updated with the best parameters and the
       study that produced them, with its budget), phase2/results/search_trials.csv, search_summary.md (budget,
       what stopped the search, what it found; shown in the report), phase2/figures/optuna_history.png and
       optuna_importance.png
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from msa import cli, stamp
from msa.config import add_output_dirs

log = logging.getLogger("phase2.search")
PHASE_DIR = Path(__file__).resolve().parent


def build_parser() -> cli.ArgumentParser:
    from msa.settings import add_model_args, add_training_args

    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0] + "\n\n" + "\n\n".join(__doc__.split("\n\n")[1:]))
    cli.add_data_args(p)
    s = p.add_argument_group("search")
    s.add_argument("--n-trials", type=cli.positive_int, default=50,
                   help="finished trials the study should have in total")
    s.add_argument("--storage", default=None,
                   help="SQLAlchemy database URL (default sqlite:///<results-dir>/optuna.db)")
    s.add_argument("--study-name", default=None,
                   help="study name inside the storage (default phase2_<fusion>, or phase2_all_fusions with "
                        "--search-fusion, so that a study never mixes trials of different fixed fusions)")
    s.add_argument("--search-fusion", action="store_true",
                   help="also search the fusion (default: keep the fusion of best_config.json, else concat)")
    s.add_argument("--jobs", type=cli.positive_int, default=2, help="local worker processes on the same study")
    s.add_argument("--timeout", type=cli.positive_float, default=None,
                   help="time budget in seconds: no trial starts after it (the study then has fewer than "
                        "--n-trials; best_config.json records the budget and what stopped the search)")
    s.add_argument("--best-config", type=Path, default=PHASE_DIR / "results" / "best_config.json",
                   help="best_config.json of the fusion search: the starting point, updated at the end")
    s.add_argument("--sampler-seed", type=int, default=0, help="seed of the TPE sampler")
    add_model_args(p, fusion=True, loss=False)
    add_training_args(p, seeds="42,43", resume=False)
    o = p.add_argument_group("output")
    o.add_argument("--cache-dir", type=Path, default=cli.CACHE_ROOT / "features", help="feature cache folder")
    add_output_dirs(o, PHASE_DIR, "where the trial table goes", "where Optuna's plots go")
    stamp.add_force_arg(o)
    o.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv=None) -> int:
    from msa import fusion_search as stage
    from msa.io import write_csv, write_json, write_text
    from msa.settings import resolve

    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)
    # run_phase2's stamp stands for the best_config.json it wrote (this search then updates that file)
    stamp_path = args.results_dir / "inputs_search.json"
    inputs = stamp.inputs_of(args, files=stamp.phase0_files(cli.work_dir(args), args.split)
                             + [Path(args.best_config).parent / "inputs_fusions.json"]
                             + ([Path(args.preset)] if args.preset else []), code=[Path(__file__)])
    if stamp.check(stamp_path, inputs, args.force, "phase 2 hyper-parameter search"):
        print(f"phase 2 hyper-parameter search: up to date ({args.best_config}); --force recomputes")
        return 0
    import optuna  # after the up-to-date check, which then answers without it

    best_config = stage.start_settings(args.best_config)
    base = resolve(args, base=(best_config or {}).get("settings"))
    if args.study_name is None:
        args.study_name = stage.default_study_name(inputs, base, args.search_fusion)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    storage_url = args.storage or f"sqlite:///{(args.results_dir / 'optuna.db').resolve()}"
    study = stage.open_study(storage_url, args.study_name, stage.make_pruner())
    done = stage.finished_count(study)
    print(f"study {args.study_name} in {storage_url}: {done} finished trials, target {args.n_trials}")
    t0 = time.time()
    stage.run_workers(args, base, storage_url, done)
    study = optuna.load_study(study_name=args.study_name, storage=storage_url)
    out, finished, complete = stage.searched_config(study, base, best_config, args, storage_url)
    trials = study.trials_dataframe(attrs=("number", "state", "value", "params", "duration", "user_attrs"))
    write_csv(args.results_dir / "search_trials.csv", trials)
    write_json(args.best_config, out)
    summary = write_text(args.results_dir / "search_summary.md", stage.search_summary(out, time.time() - t0))
    plot_study(study, args.figures_dir)
    stamp.write(stamp_path, inputs, [args.best_config, summary])
    best = study.best_trial
    print(f"{len(finished)} trials ({len(finished) - len(complete)} pruned) in {time.time() - t0:.1f}s this run; "
          f"best mean weighted F1 {best.value:.4f} (trial {best.number}): {best.params}")
    print(f"-> {args.best_config}")
    return 0


def plot_study(study, figures_dir: Path) -> None:
    import warnings

    from optuna.visualization import matplotlib as ovm

    from msa.io import save_figure
    from msa.plots import pyplot

    plt = pyplot()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib backend experimental
        ax = ovm.plot_optimization_history(study)
        ax.set_title("Optuna: mean validation weighted F1 per trial")
        save_figure(ax.figure, figures_dir / "optuna_history.png")
        plt.close(ax.figure)
        complete = [t for t in study.trials if t.state.name == "COMPLETE"]
        if len(complete) >= 2:
            try:
                ax = ovm.plot_param_importances(study)  # titled by Optuna itself
                save_figure(ax.figure, figures_dir / "optuna_importance.png")
                plt.close(ax.figure)
            except (ValueError, RuntimeError) as exc:  # too few distinct trials to rank
                log.warning("no parameter-importance plot: %s", exc)


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
