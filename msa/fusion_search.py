"""The fusion-search stage (phase 2): the fusion x seed grid with its summary table and best_config.json, and the
Optuna search of hyper-parameters that refines it. ``phase2/run_phase2.py`` and ``phase2/search_hyperparam.py``
are the front ends (flags, the up-to-date check, writing the files and figures).

* :func:`parse_fusions`, :func:`grid_features`, :func:`grid_specs`: the grid's fusions, features and runs;
* :func:`summarise`, :func:`markdown_table`, :func:`best_config`: what the grid writes;
* :func:`start_settings`, :func:`default_study_name`, :func:`open_study`: where a search starts and its study;
* :func:`suggest`, :func:`over_budget`, :func:`worker`, :func:`run_workers`: the trials;
* :func:`searched_config`: best_config.json updated with the study's best trial.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from msa import cli
from msa.settings import Settings

log = logging.getLogger("phase2.search")  # the stage's messages keep the name they have always had
METRICS = ("accuracy", "weighted_f1", "macro_f1", "f1_neutral", "ece", "seconds")
FINISHED = ("COMPLETE", "PRUNED")


# ----------------------------------------------------------------------------------------------- the grid
def parse_fusions(text: str | None) -> list[str]:
    """The comma-separated fusions of --fusions, each checked against the registry (``None``: all of it)."""
    from msa.fusions import FUSIONS

    if text is None:
        return list(FUSIONS)
    fusions = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in fusions if f not in FUSIONS]
    if unknown or not fusions:
        raise cli.UserError(f"unknown fusion(s) {', '.join(unknown) or '(none given)'}; "
                            f"choose from {', '.join(FUSIONS)}")
    return fusions


def grid_features(s: dict, fusions: list[str], data, data_dir: Path, cache_dir: Path, batch_size: int):
    """The features of every labelled post, with the token sequences any of ``fusions`` needs."""
    from msa.experiment import labelled_features, load_backbones, token_modalities

    tb, ib = load_backbones(s.text_backbone, s.image_backbone, s.text_pooling, cache_dir)
    tokens = sorted({m for f in fusions for m in token_modalities(f)})
    return labelled_features(data_dir, data.guids, tb, ib, cache_dir, tokens, batch_size, side=s.side_features)


def grid_specs(s: Settings, fusions: list[str], seeds: list[int], runs_dir: Path, mixed_precision,
               deadline: float | None = None, reuse_from: Path | None = None) -> list:
    """One run per fusion x seed, the slowest fusions first, so that parallel workers finish together. With a
    ``deadline`` (a time budget) seed by seed instead: every fusion gets its first seed before any gets a second,
    and runs that would start after the deadline are skipped (never the first, so the grid has a result).
    ``reuse_from`` (phase 1's results): a run there of the same fusion and seed whose config equals the grid's run
    (phase 1's baseline is the grid's ``concat`` with the default settings) is copied, not trained again."""
    from msa.experiment import RunSpec, finished_runs

    found = finished_runs(reuse_from)

    order = sorted(fusions, key=lambda f: (f not in ("cross_attention", "encoder"), fusions.index(f)))
    pairs = ([(f, seed) for seed in seeds for f in order] if deadline is not None else
             [(f, seed) for f in order for seed in seeds])
    return [RunSpec(runs_dir / f"{f}-s{seed}", s.replace(feature_fusion=f), seed, tag=f,
                    mixed_precision=mixed_precision, deadline=deadline if i else None,  # the first always runs
                    same_as=tuple(found.get((f, seed), ())) or None)
            for i, (f, seed) in enumerate(pairs)]


def grid_budget(timeout: float | None, specs: list, done: list[dict], fusions: list[str], ran: list[str]) -> dict:
    """What the grid's time budget let through: the record for best_config.json, and a note for the table."""
    skipped = len(specs) - len(done)
    missing = [f for f in fusions if f not in ran]
    record = {"timeout_s": timeout, "runs": len(specs), "runs_done": len(done), "runs_skipped": skipped,
              "fusions_not_run": missing, "note": ""}
    if timeout:
        seeds = {f: sum(r["tag"] == f for r in done) for f in ran}
        record["note"] = (f"\nTime budget {timeout:g} s: {len(done)} of {len(specs)} runs started within it"
                          + (f" ({skipped} skipped; seeds per fusion: "
                             + ", ".join(f"{f} {n}" for f, n in seeds.items()) + ")" if skipped else "")
                          + (f"; not run: {', '.join(missing)}" if missing else "") + ".\n")
    return record


def copied_note(done: list[dict]) -> str:
    """The table's note on the runs copied from another stage (:func:`grid_specs`' ``reuse_from``), or ``""``."""
    copied = [r for r in done if r.get("same_as")]
    if not copied:
        return ""
    runs = ", ".join(f"{r['tag']} seed {r['seed']}" for r in copied)
    return (f"\n{len(copied)} of the {len(done)} runs ({runs}) are the same runs as {Path(copied[0]['same_as']).parent}"
            " (the same configuration and seed): copied, not trained again (`same_as` in their config.json).\n")


def summarise(results: list[dict], key: str = "tag"):
    """One row per method: mean and std (ddof=1) over seeds of every metric in METRICS."""
    import pandas as pd

    from msa.metrics import mean_std_columns

    frame = pd.DataFrame(results)
    rows = [{key: name, "n_seeds": len(grp), **mean_std_columns(grp, METRICS)}
            for name, grp in frame.groupby(key, sort=False)]
    return pd.DataFrame(rows).set_index(key)


def markdown_table(table, title: str, first: str = "fusion") -> str:
    from msa.metrics import pm

    cols = [("accuracy", "accuracy"), ("weighted_f1", "weighted F1"), ("macro_f1", "macro F1"),
            ("f1_neutral", "neutral F1"), ("ece", "ECE")]
    lines = [title, "", f"| {first} | " + " | ".join(n for _, n in cols) + " | seconds/run |",
             "|---|" + "---:|" * (len(cols) + 1)]
    best = table["weighted_f1_mean"].idxmax()
    for name, r in table.iterrows():
        cells = [pm(r, k) for k, _ in cols]
        label = f"**{name}**" if name == best else str(name)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {r['seconds_mean']:.1f} |")
    return "\n".join(lines) + "\n"


def best_config(table, s: Settings, fusions: list[str], seeds: list[int], data, backbones) -> dict:
    """best_config.json: the fusion with the best mean validation weighted F1 and every setting it trained with."""
    best = str(table["weighted_f1_mean"].idxmax())
    settings = s.replace(feature_fusion=best)
    return {
        "source": "phase2/run_phase2.py (fusion search)",
        "selected_by": f"mean validation weighted F1 over seeds {seeds} on split {data.split.name}",
        "split": data.split.name, "split_sha256": data.split.sha256, "seeds": seeds,
        "settings": settings.to_dict(), "hyperparameters": settings.hyperparameters,
        "metrics": {m: {"mean": float(table.loc[best, f"{m}_mean"]), "std": float(table.loc[best, f"{m}_std"])}
                    for m in METRICS if f"{m}_mean" in table},
        "backbones": backbones,
        "fusion_search": {f: float(table.loc[f, "weighted_f1_mean"]) for f in fusions},
    }


# ----------------------------------------------------------------------------------------------- the search
def start_settings(path: Path) -> dict | None:
    """The fusion search's best_config.json, or None (with a warning) when it was not run."""
    import json

    cfg = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    if cfg is None:
        log.warning("%s not found (phase2/run_phase2.py not run): starting from the defaults", path)
    return cfg


def default_study_name(inputs: dict, base: Settings, search_fusion: bool) -> str:
    """One study per set of inputs: the same inputs resume it, changed inputs start anew."""
    import hashlib
    import json

    key = {k: v for k, v in inputs["arguments"].items() if k not in ("n_trials", "study_name", "force")}
    digest = hashlib.sha256(json.dumps({**inputs, "arguments": key}, sort_keys=True).encode()).hexdigest()[:8]
    return ("phase2_all_fusions" if search_fusion else f"phase2_{base.feature_fusion}") + f"-{digest}"


def suggest(trial, base: Settings, search_fusion: bool) -> Settings:
    """The search space; everything else stays as in ``base``."""
    from msa.fusions import FUSIONS

    s = {"learning_rate": trial.suggest_float("learning_rate", 1e-5, 3e-3, log=True),
         "weight_decay": trial.suggest_float("weight_decay", 1e-5, 0.1, log=True),
         "dropout": trial.suggest_float("dropout", 0.0, 0.6),
         "hidden": trial.suggest_categorical("hidden", [64, 128, 256, 512]),
         "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128]),
         "num_epochs": trial.suggest_int("num_epochs", 5, 40)}
    if search_fusion:
        s["feature_fusion"] = trial.suggest_categorical("feature_fusion", list(FUSIONS))
    return base.replace(**s)


class OverBudget(Exception):
    """Raised by a trial that started after the study already had its trials (recorded as FAIL, not counted)."""


def finished_count(study) -> int:
    """The study's finished (complete or pruned) trials."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def over_budget(study, trial, n_trials: int) -> bool:
    """True when the finished trials plus the running ones started before this one already reach the budget.

    Trial numbers are handed out atomically by the storage, so of several workers racing for the last slot
    exactly one (the lowest number) goes on."""
    from optuna.trial import TrialState

    running_before = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                      if t.number < trial.number]
    return finished_count(study) + len(running_before) >= n_trials


#: Optuna steps of a trial: epoch ``e`` of its first seed is step ``e`` (its best validation weighted F1 so far),
#: the mean after seed ``k`` is step ``SEED_STEP + k``. A trial is pruned from epoch :data:`WARMUP_EPOCHS` of
#: its first seed on, or after a seed, when it is below the median of the earlier trials at that step.
SEED_STEP = 1000
WARMUP_EPOCHS = 5


def make_pruner():
    """The search's pruner: the median rule after 5 trials, never before epoch :data:`WARMUP_EPOCHS`."""
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=WARMUP_EPOCHS)


def make_objective(study, base: Settings, fs, data, seeds: list[int], runs_dir: Path, n_trials: int,
                   search_fusion: bool, mixed_precision: str = "auto"):
    """Optuna's objective: the mean validation weighted F1 over ``seeds``. Hopeless trials are pruned early: during
    the first seed, epoch by epoch (its best validation weighted F1 so far, from epoch :data:`WARMUP_EPOCHS`), and
    after each seed but the last (the mean so far)."""
    import optuna

    from msa.experiment import train_run

    def objective(trial):
        if over_budget(study, trial, n_trials):
            trial.set_user_attr("over_budget", True)
            raise OverBudget(f"trial {trial.number}: the study already has its {n_trials} trials")
        s = suggest(trial, base, search_fusion)
        scores = []
        best_so_far = [-1.0]

        def on_epoch(row: dict) -> None:  # the first seed's epochs
            best_so_far[0] = max(best_so_far[0], float(row.get("weighted_f1", -1.0)))
            trial.report(best_so_far[0], int(row["epoch"]))
            if trial.should_prune():
                trial.set_user_attr("pruned_at", f"seed {seeds[0]}, epoch {int(row['epoch'])}")
                raise optuna.TrialPruned()

        for step, seed in enumerate(seeds):
            res = train_run(runs_dir / f"trial{trial.number}-s{seed}", fs, data, fusion=s.feature_fusion,
                            loss=s.loss_type, train_cfg=s.train_config(seed, mixed_precision), hidden=int(s.hidden),
                            dropout=float(s.dropout), args_record={"trial": trial.number, "settings": s.to_dict()},
                            progress=False, light=True, settings=s, on_epoch=on_epoch if step == 0 else None)
            scores.append(res["metrics"]["weighted_f1"])
            trial.report(sum(scores) / len(scores), SEED_STEP + step)
            if step < len(seeds) - 1 and trial.should_prune():
                trial.set_user_attr("pruned_at", f"after seed {seed}")
                raise optuna.TrialPruned()
        trial.set_user_attr("f1_neutral", res["metrics"]["f1_neutral"])
        return sum(scores) / len(scores)

    return objective


def worker(args, base: Settings, storage_url: str, n_trials: int, worker_id: int = 0) -> None:
    """Run trials of the shared study until it has ``n_trials`` finished trials (or the timeout passes)."""
    import optuna
    import torch

    from msa.experiment import labelled_features, load_backbones, load_labelled, token_modalities
    from msa.fusions import FUSIONS
    from msa.settings import parse_seeds

    if args.jobs > 1:
        torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # an over-budget trial is an expected FAIL
    seeds = parse_seeds(args.seeds)
    data = load_labelled(cli.work_dir(args), args.split)
    tb, ib = load_backbones(base.text_backbone, base.image_backbone, base.text_pooling, args.cache_dir)
    fusions = list(FUSIONS) if args.search_fusion else [base.feature_fusion]
    tokens = sorted({m for f in fusions for m in token_modalities(f)})
    fs = labelled_features(Path(args.data_root) / "data", data.guids, tb, ib, args.cache_dir, tokens,
                           side=base.side_features)
    study = optuna.load_study(study_name=args.study_name, storage=storage_url, pruner=make_pruner(),
                              sampler=optuna.samplers.TPESampler(seed=args.sampler_seed + worker_id))
    objective = make_objective(study, base, fs, data, seeds, args.results_dir / "search_runs", n_trials,
                               args.search_fusion, getattr(args, "mixed_precision", "auto"))
    deadline = time.time() + args.timeout if args.timeout else None
    while finished_count(study) < n_trials and (deadline is None or time.time() < deadline):
        before = len(study.trials)
        study.optimize(objective, n_trials=1, catch=(OverBudget,))
        if study.trials[-1].user_attrs.get("over_budget") or len(study.trials) == before:
            break


def _worker_job(shared: dict, worker_id: int) -> None:
    """One Optuna worker process (:func:`msa.workers.run_jobs`); its log is the caller's."""
    if not shared["inline"]:
        cli.setup_logging(False)
        logging.getLogger("msa").setLevel(logging.WARNING)
    worker(shared["args"], shared["base"], shared["storage_url"], shared["n_trials"], worker_id)


def run_workers(args, base: Settings, storage_url: str, done: int) -> None:
    """--jobs local worker processes on the study (one: in this process, and only if trials are missing)."""
    from msa.workers import run_jobs

    if args.jobs > 1 or done < args.n_trials:
        run_jobs(_worker_job, list(range(args.jobs)), {"args": args, "base": base, "storage_url": storage_url,
                                                       "n_trials": args.n_trials},
                 n_jobs=args.jobs, threads=1, desc=None)


def search_summary(out: dict, elapsed_s: float) -> str:
    """search_summary.md: the search's budget, what stopped it, and what it found (the report shows it)."""
    hs = out["hyperparameter_search"]
    budget = hs["budget"]
    limit = f"{budget['timeout_s']:g} s" if budget.get("timeout_s") else "none"
    params = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in hs["params"].items())
    return "\n".join([
        "# Hyper-parameter search (Optuna)", "",
        f"- Budget: {budget['n_trials']} finished trials, time limit {limit}; pruning: {budget['pruning']}.",
        f"- Stopped by: {'the time limit' if budget['stopped_by'] == 'timeout' else 'the trial count'}, with "
        f"{hs['finished_trials']} finished trials ({hs['pruned_trials']} pruned) in {elapsed_s:.0f} s this run "
        f"({budget['trial_seconds']:.0f} s of trial time over all workers).",
        f"- Found: trial {hs['best_trial']}, mean validation weighted F1 {hs['best_value']:.4f} "
        f"({out['selected_by']}): {params}.",
        f"- Study `{hs['study']}` in `{hs['storage']}`; every trial in `search_trials.csv`.", ""])


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


def searched_config(study, base: Settings, start: dict | None, args, storage_url: str) -> tuple[dict, list, list]:
    """best_config.json updated with the study's best trial, and the study's finished and complete trials."""
    finished = [t for t in study.trials if t.state.name in FINISHED and not t.user_attrs.get("over_budget")]
    complete = [t for t in finished if t.state.name == "COMPLETE"]
    if not complete:
        raise cli.UserError(f"study {args.study_name} has no complete trial yet")
    best = study.best_trial
    settings = base.replace(**best.params)
    out = dict(start or {"settings": base.to_dict()})
    out.update({
        "source": f"phase2/search_hyperparam.py (Optuna study {args.study_name!r} in {storage_url}, "
                  f"trial {best.number} of {len(finished)})",
        "selected_by": f"mean validation weighted F1 over seeds {args.seeds} on split {args.split}",
        "settings": settings.to_dict(), "hyperparameters": settings.hyperparameters,
        "hyperparameter_search": {"study": args.study_name, "storage": storage_url, "best_trial": best.number,
                                  "best_value": best.value, "finished_trials": len(finished),
                                  "pruned_trials": len(finished) - len(complete), "params": best.params,
                                  "budget": {"n_trials": args.n_trials, "timeout_s": args.timeout,
                                             "pruning": f"median of earlier trials, per epoch of the first seed "
                                                        f"from epoch {WARMUP_EPOCHS} and after each seed",
                                             "stopped_by": "timeout" if len(finished) < args.n_trials
                                             else "n_trials",
                                             "trial_seconds": round(sum(
                                                 t.duration.total_seconds() for t in finished
                                                 if t.duration is not None), 1)}},
    })
    return out, finished, complete
