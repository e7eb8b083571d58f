"""Phase 2b: Optuna hyper-parameter search (TPE sampler, median pruning) of the fusion in
phase2/results/best_config.json, which it updates; the study and trial table also go to phase2/results/.

Run from the repository root after phase 0 (and usually after phase2/run_phase2.py, whose best fusion it tunes):

    python phase2/search_hyperparam.py --data-root dataset/ --n-trials 50
    python phase2/search_hyperparam.py --search-fusion --n-trials 100 --jobs 2

The objective is the mean validation weighted F1 over --seeds on the phase-0 split; after each seed the running
mean is reported to Optuna, so unpromising trials are pruned early. The test file is never read.

Storage is any SQLAlchemy database URL (--storage, default SQLite at phase2/results/optuna.db) and the study is
named by --study-name, so an interrupted search resumes where it stopped: rerun the same command. --n-trials is
the number of finished (complete or pruned) trials the study should have in total, so reruns and parallel
workers stop together. Several processes or machines can work on one study: start this script on each with the
same --study-name and a shared database, e.g. --storage postgresql://user:pass@dbhost/optuna (SQLite only for
processes on one machine; --jobs N starts N local processes).

Reads  <work-dir>/train_cleaned.txt, splits/<split>.csv, the feature cache, phase2/results/best_config.json
Writes the study in --storage, phase2/results/best_config.json (updated with the best parameters and the
       study that produced them), phase2/results/search_trials.csv, phase2/figures/optuna_history.png and
       optuna_importance.png
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from msa import cli, stamp

log = logging.getLogger("phase2.search")
PHASE_DIR = Path(__file__).resolve().parent
FINISHED = ("COMPLETE", "PRUNED")


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
                   help="stop starting new trials after this many seconds")
    s.add_argument("--best-config", type=Path, default=PHASE_DIR / "results" / "best_config.json",
                   help="best_config.json of the fusion search: the starting point, updated at the end")
    s.add_argument("--sampler-seed", type=int, default=0, help="seed of the TPE sampler")
    add_model_args(p, fusion=True, loss=False)
    add_training_args(p, seeds="42,43", resume=False)
    o = p.add_argument_group("output")
    o.add_argument("--cache-dir", type=Path, default=cli.CACHE_ROOT / "features", help="feature cache folder")
    o.add_argument("--results-dir", type=Path, default=PHASE_DIR / "results", help="where the trial table goes")
    o.add_argument("--figures-dir", type=Path, default=PHASE_DIR / "figures", help="where Optuna's plots go")
    stamp.add_force_arg(o)
    o.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def suggest(trial, base: dict, search_fusion: bool) -> dict:
    """The search space; everything else stays as in ``base``."""
    from msa.fusions import FUSIONS

    s = dict(base)
    s["learning_rate"] = trial.suggest_float("learning_rate", 1e-5, 3e-3, log=True)
    s["weight_decay"] = trial.suggest_float("weight_decay", 1e-5, 0.1, log=True)
    s["dropout"] = trial.suggest_float("dropout", 0.0, 0.6)
    s["hidden"] = trial.suggest_categorical("hidden", [64, 128, 256, 512])
    s["batch_size"] = trial.suggest_categorical("batch_size", [32, 64, 128])
    s["num_epochs"] = trial.suggest_int("num_epochs", 5, 40)
    if search_fusion:
        s["feature_fusion"] = trial.suggest_categorical("feature_fusion", list(FUSIONS))
    return s


class OverBudget(Exception):
    """Raised by a trial that started after the study already had its trials (recorded as FAIL, not counted)."""


def _finished(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def over_budget(study, trial, n_trials: int) -> bool:
    """True when the finished trials plus the running ones started before this one already reach the budget.

    Trial numbers are handed out atomically by the storage, so of several workers racing for the last slot
    exactly one (the lowest number) goes on."""
    from optuna.trial import TrialState

    running_before = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                      if t.number < trial.number]
    return _finished(study) + len(running_before) >= n_trials


def worker(args, base: dict, storage_url: str, n_trials: int, worker_id: int = 0) -> None:
    """Run trials of the shared study until it has ``n_trials`` finished trials (or the timeout passes)."""
    import optuna
    import torch

    from msa.experiment import labelled_features, load_backbones, load_labelled, token_modalities, train_run
    from msa.settings import parse_seeds, train_config

    if args.jobs > 1:
        torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # an over-budget trial is an expected FAIL
    seeds = parse_seeds(args.seeds)
    data = load_labelled(cli.work_dir(args), args.split)
    tb, ib = load_backbones(base["text_backbone"], base["image_backbone"], base["text_pooling"])
    from msa.fusions import FUSIONS

    fusions = list(FUSIONS) if args.search_fusion else [base["feature_fusion"]]
    tokens = sorted({m for f in fusions for m in token_modalities(f)})
    fs = labelled_features(Path(args.data_root) / "data", data.guids, tb, ib, args.cache_dir, tokens,
                           side=base["side_features"])
    study = optuna.load_study(study_name=args.study_name, storage=storage_url,
                              sampler=optuna.samplers.TPESampler(seed=args.sampler_seed + worker_id))
    runs_dir = args.results_dir / "search_runs"
    deadline = time.time() + args.timeout if args.timeout else None

    def objective(trial):
        if over_budget(study, trial, n_trials):
            trial.set_user_attr("over_budget", True)
            raise OverBudget(f"trial {trial.number}: the study already has its {n_trials} trials")
        s = suggest(trial, base, args.search_fusion)
        scores = []
        for step, seed in enumerate(seeds):
            res = train_run(runs_dir / f"trial{trial.number}-s{seed}", fs, data, fusion=s["feature_fusion"],
                            loss=s["loss_type"], train_cfg=train_config(s, seed), hidden=int(s["hidden"]),
                            dropout=float(s["dropout"]), args_record={"trial": trial.number, "settings": s},
                            progress=False, light=True)
            scores.append(res["metrics"]["weighted_f1"])
            trial.report(sum(scores) / len(scores), step)
            if step < len(seeds) - 1 and trial.should_prune():
                raise optuna.TrialPruned()
        trial.set_user_attr("f1_neutral", res["metrics"]["f1_neutral"])
        return sum(scores) / len(scores)

    while _finished(study) < n_trials and (deadline is None or time.time() < deadline):
        before = len(study.trials)
        study.optimize(objective, n_trials=1, catch=(OverBudget,))
        if study.trials[-1].user_attrs.get("over_budget") or len(study.trials) == before:
            break


def _worker_entry(args, base, storage_url, n_trials, worker_id):
    cli.setup_logging(False)
    logging.getLogger("msa").setLevel(logging.WARNING)
    worker(args, base, storage_url, n_trials, worker_id)


def open_study(storage_url: str, name: str, pruner, attempts: int = 6):
    """Create or load the study. Workers that start together race to create the schema and the study in a
    fresh database; the loser of such a race retries after a short random pause."""
    import random

    import optuna

    last = None
    for attempt in range(attempts):
        try:
            kw = {"connect_args": {"timeout": 60}} if storage_url.startswith("sqlite") else {}
            storage = optuna.storages.RDBStorage(storage_url, engine_kwargs=kw)
            return optuna.create_study(study_name=name, storage=storage, direction="maximize", pruner=pruner,
                                       load_if_exists=True)
        except Exception as exc:  # noqa: BLE001 - retried, then reported as the user's to fix
            last = exc
            time.sleep(0.2 + random.random() * (attempt + 1))
    raise cli.UserError(f"cannot open Optuna storage {storage_url}: {str(last).splitlines()[0]}")


def main(argv=None) -> int:
    import hashlib
    import json

    import optuna

    from msa.io import write_csv, write_json
    from msa.settings import HYPERPARAMETERS, resolve

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
    best_config = json.loads(args.best_config.read_text(encoding="utf-8")) if args.best_config.is_file() else None
    if best_config is None:
        log.warning("%s not found (phase2/run_phase2.py not run): starting from the defaults", args.best_config)
    base = resolve(args, base=(best_config or {}).get("settings"))
    if args.study_name is None:  # one study per set of inputs: same inputs resume it, changed inputs start anew
        key = {k: v for k, v in inputs["arguments"].items() if k not in ("n_trials", "study_name", "force")}
        digest = hashlib.sha256(json.dumps({**inputs, "arguments": key}, sort_keys=True).encode()).hexdigest()[:8]
        args.study_name = ("phase2_all_fusions" if args.search_fusion else f"phase2_{base['feature_fusion']}") \
            + f"-{digest}"
    args.results_dir.mkdir(parents=True, exist_ok=True)
    storage_url = args.storage or f"sqlite:///{(args.results_dir / 'optuna.db').resolve()}"
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    study = open_study(storage_url, args.study_name, pruner)
    done = _finished(study)
    print(f"study {args.study_name} in {storage_url}: {done} finished trials, target {args.n_trials}")
    t0 = time.time()
    if args.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_worker_entry, args, base, storage_url, args.n_trials, i) for i in range(args.jobs)]
            for f in futures:
                f.result()
    elif done < args.n_trials:
        worker(args, base, storage_url, args.n_trials)
    study = optuna.load_study(study_name=args.study_name, storage=storage_url)
    finished = [t for t in study.trials if t.state.name in FINISHED and not t.user_attrs.get("over_budget")]
    complete = [t for t in finished if t.state.name == "COMPLETE"]
    if not complete:
        raise cli.UserError(f"study {args.study_name} has no complete trial yet")
    trials = study.trials_dataframe(attrs=("number", "state", "value", "params", "duration", "user_attrs"))
    write_csv(args.results_dir / "search_trials.csv", trials)
    best = study.best_trial
    settings = {**base, **best.params}
    hp = {k: settings[k] for k in HYPERPARAMETERS}
    out = dict(best_config or {"settings": base})
    out.update({
        "source": f"phase2/search_hyperparam.py (Optuna study {args.study_name!r} in {storage_url}, "
                  f"trial {best.number} of {len(finished)})",
        "selected_by": f"mean validation weighted F1 over seeds {args.seeds} on split {args.split}",
        "settings": settings, "hyperparameters": hp,
        "hyperparameter_search": {"study": args.study_name, "storage": storage_url, "best_trial": best.number,
                                  "best_value": best.value, "finished_trials": len(finished),
                                  "pruned_trials": len(finished) - len(complete), "params": best.params},
    })
    write_json(args.best_config, out)
    plot_study(study, args.figures_dir)
    stamp.write(stamp_path, inputs, [args.best_config])
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
