"""Phase 2 on synthetic data: fusion search tables and best_config.json, Optuna search and its shared storage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from msa.fusions import FUSIONS
from phase0 import data_cleaner
from phase2 import run_phase2, search_hyperparam
from tests.conftest import REPO
from tests.tiny_models import tiny_bert, tiny_vit


@pytest.fixture(scope="module")
def setup(synthetic_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("phase2")
    work = tmp / "work"
    data_cleaner.main(["--data-root", str(synthetic_root), "--work-dir", str(work), "--folds", "0"])
    base = ["--data-root", str(synthetic_root), "--work-dir", str(work), "--cache-dir", str(tmp / "cache"),
            "--text-backbone", str(tiny_bert(tmp / "bert")), "--image-backbone", str(tiny_vit(tmp / "vit")),
            "--results-dir", str(tmp / "results"), "--figures-dir", str(tmp / "figures")]
    return {"tmp": tmp, "base": base}


@pytest.fixture(scope="module")
def searched(setup):
    assert run_phase2.main(setup["base"] + ["--seeds", "1,2", "--num-epochs", "3", "--jobs", "1"]) == 0
    return setup


def test_fusion_search_covers_the_registry(searched):
    res = searched["tmp"] / "results"
    table = pd.read_csv(res / "summary.csv")
    assert table["fusion"].tolist() == list(FUSIONS)
    for col in ("accuracy_mean", "weighted_f1_std", "macro_f1_mean", "f1_neutral_std"):
        assert col in table and table[col].notna().all()
    assert (table["n_seeds"] == 2).all()
    assert len(list((res / "runs").glob("*/metrics.json"))) == 2 * len(FUSIONS)
    md = (res / "summary.md").read_text()
    assert all(f in md for f in FUSIONS) and "±" in md
    assert (searched["tmp"] / "figures" / "fusions.png").stat().st_size > 10_000


def test_best_config_names_the_best_fusion_and_its_settings(searched):
    res = searched["tmp"] / "results"
    best = json.loads((res / "best_config.json").read_text())
    table = pd.read_csv(res / "summary.csv").set_index("fusion")
    assert best["settings"]["feature_fusion"] == table["weighted_f1_mean"].idxmax()
    assert best["hyperparameters"]["num_epochs"] == 3 and "fusion search" in best["source"]
    assert best["metrics"]["weighted_f1"]["mean"] == pytest.approx(table["weighted_f1_mean"].max())


def test_a_time_budget_runs_seed_by_seed_and_says_what_it_skipped(setup, tmp_path):
    out = ["--results-dir", str(tmp_path / "results"), "--figures-dir", str(tmp_path / "figures")]
    argv = setup["base"] + ["--seeds", "1,2", "--num-epochs", "2", "--jobs", "1", "--fusions", "concat,add",
                            "--timeout", "0.001", *out]
    assert run_phase2.main(argv) == 0
    best = json.loads((tmp_path / "results" / "best_config.json").read_text())
    budget = best["grid_budget"]
    assert budget["timeout_s"] == 0.001 and budget["runs"] == 4 and budget["runs_done"] == 1
    assert budget["runs_skipped"] == 3 and budget["fusions_not_run"] == ["add"]
    assert best["settings"]["feature_fusion"] == "concat" and list(best["fusion_search"]) == ["concat"]
    summary = (tmp_path / "results" / "summary.md").read_text()
    assert "Time budget 0.001 s: 1 of 4 runs started within it (3 skipped" in summary and "not run: add" in summary
    assert not (tmp_path / "results" / "runs" / "add-s1").exists()


def test_phase1s_baseline_runs_are_copied_into_the_grid_and_equal_training_them(setup, tmp_path):
    """Phase 1's baseline is the grid's concat with the default settings: the grid copies those runs (--reuse-runs,
    phase 1's results by default) instead of training them again, and what it copies is what training gives."""
    from phase1 import main as phase1

    p1 = tmp_path / "p1"
    common = ["--seeds", "1,2", "--num-epochs", "3"]
    assert phase1.main(setup["base"] + common + ["--name", "base", "--no-probe", "--results-dir", str(p1),
                                                 "--figures-dir", str(tmp_path / "f1")]) == 0

    def grid(out: str, reuse: str):
        assert run_phase2.main(setup["base"] + common + ["--jobs", "1", "--fusions", "concat,add", "--reuse-runs",
                                                         reuse, "--results-dir", str(tmp_path / out),
                                                         "--figures-dir", str(tmp_path / f"{out}-f")]) == 0
        return tmp_path / out

    copied, trained = grid("copied", str(p1)), grid("trained", "none")
    for seed in (1, 2):
        run = copied / "runs" / f"concat-s{seed}"
        config = json.loads((run / "config.json").read_text())
        assert config["same_as"] == str(p1 / f"base-s{seed}")
        assert sorted(p.name for p in run.iterdir()) == ["SOURCE", "config.json", "history.csv", "metrics.json",
                                                         "val_predictions.csv"]  # a light run: no checkpoint
        assert "same_as" not in json.loads((trained / "runs" / f"concat-s{seed}" / "config.json").read_text())
        assert "same_as" not in json.loads((copied / "runs" / f"add-s{seed}" / "config.json").read_text())
        ours, theirs = (json.loads((d / "runs" / f"concat-s{seed}" / "metrics.json").read_text())
                        for d in (copied, trained))
        assert ours["weighted_f1"] == theirs["weighted_f1"] and ours["confusion_matrix"] == theirs["confusion_matrix"]
    a, b = (pd.read_csv(d / "summary.csv") for d in (copied, trained))
    cols = [c for c in a.columns if not c.startswith("seconds")]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    assert "2 of the 4 runs (concat seed 1, concat seed 2) are the same runs as" in (copied / "summary.md").read_text()
    best = json.loads((copied / "best_config.json").read_text())
    assert len(best["grid_budget"]["runs_copied"]) == 2


def test_unknown_fusion_is_a_clear_error(setup):
    with pytest.raises(run_phase2.cli.UserError, match="unknown fusion"):
        run_phase2.main(setup["base"] + ["--fusions", "concat,nope"])


def test_search_updates_best_config_and_resumes(searched, tmp_path):
    res = searched["tmp"] / "results"
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = searched["base"] + ["--seeds", "1", "--storage", storage, "--study-name", "s", "--jobs", "1",
                               "--best-config", str(res / "best_config.json")]
    assert search_hyperparam.main(args + ["--n-trials", "3"]) == 0
    best = json.loads((res / "best_config.json").read_text())
    assert "search_hyperparam" in best["source"] and best["hyperparameter_search"]["finished_trials"] == 3
    assert best["settings"]["learning_rate"] == best["hyperparameter_search"]["params"]["learning_rate"]
    assert "fusion_search" in best  # what the fusion search found is kept
    # an interrupted or repeated search goes on from where it stopped: 2 more trials to reach 5
    assert search_hyperparam.main(args + ["--n-trials", "5"]) == 0
    import optuna

    study = optuna.load_study(study_name="s", storage=storage)
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials) == 5
    assert (searched["tmp"] / "figures" / "optuna_history.png").is_file()
    assert (searched["tmp"] / "figures" / "optuna_importance.png").is_file()
    assert len(pd.read_csv(res / "search_trials.csv")) >= 5
    budget = json.loads((res / "best_config.json").read_text())["hyperparameter_search"]["budget"]
    assert budget["n_trials"] == 5 and budget["timeout_s"] is None and budget["stopped_by"] == "n_trials"
    summary = (res / "search_summary.md").read_text()
    assert "Budget: 5 finished trials, time limit none" in summary and "Stopped by: the trial count" in summary


def test_hopeless_trials_are_pruned_epoch_by_epoch_in_the_first_seed(searched, tmp_path):
    """The first seed reports its best validation weighted F1 each epoch; a pruner that finds it hopeless stops the
    trial there (not after the whole run), from the warm-up epoch on."""
    import optuna

    from msa import fusion_search as stage
    from msa.experiment import labelled_features, load_backbones, load_labelled
    from msa.settings import Settings

    base_args = dict(zip(searched["base"][::2], searched["base"][1::2], strict=True))
    data = load_labelled(Path(base_args["--work-dir"]), "default")
    tb, ib = load_backbones(base_args["--text-backbone"], base_args["--image-backbone"])
    fs = labelled_features(Path(base_args["--data-root"]) / "data", data.guids, tb, ib,
                           Path(base_args["--cache-dir"]))
    base = Settings.from_dict({"text_backbone": base_args["--text-backbone"], "num_epochs": 6, "patience": 0},
                              strict=False)
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.ThresholdPruner(lower=2.0, n_warmup_steps=3))
    objective = stage.make_objective(study, base, fs, data, [1, 2], tmp_path / "runs", 1, False)
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.state.name == "PRUNED" and trial.user_attrs["pruned_at"] == "seed 1, epoch 3"
    assert sorted(trial.intermediate_values) == [1, 2, 3]  # one report per epoch, none after the prune
    assert not (tmp_path / "runs" / "trial0-s2").exists()  # the second seed never started
    assert stage.make_pruner()._n_warmup_steps == stage.WARMUP_EPOCHS


def test_two_processes_share_one_sqlite_study(searched, tmp_path):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    cmd = [sys.executable, "phase2/search_hyperparam.py", *searched["base"], "--seeds", "1", "--num-epochs", "2",
           "--storage", storage, "--study-name", "shared", "--jobs", "1", "--n-trials", "6",
           "--best-config", str(tmp_path / "best_config.json")]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-3000:] for o, p in zip(outs, procs) if p.returncode]
    import optuna

    study = optuna.load_study(study_name="shared", storage=storage)
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 6  # together, exactly the requested number
    assert not [t for t in study.trials if t.state.name == "RUNNING"]
