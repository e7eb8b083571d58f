"""The shared core: typed settings and their generated flags, the one training loop, the worker helper and the
declared hand-off records."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import pytest

from msa import cli
from msa.config import add_options, check_mapping, from_args, option
from msa.loop import LoopState, run_epochs
from msa.records import BestRecord, RunFolder, read_best, write_best
from msa.settings import DEFAULTS, Settings, add_model_args, add_training_args, resolve
from msa.workers import run_jobs


# ----------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class _Opts:
    count: int = option(3, "how many", type=cli.positive_int)
    mode: str = option("a", "which", choices=lambda: ["a", "b"])
    verbose: bool = option(False, "say more")
    hidden_only: str = option("x", "set from files only", flag="")


def test_flags_are_generated_from_the_fields():
    p = cli.ArgumentParser()
    add_options(p, _Opts, group="things")
    ns = p.parse_args(["--count", "5", "--mode", "b", "--verbose"])
    assert from_args(_Opts, ns) == _Opts(count=5, mode="b", verbose=True)
    assert from_args(_Opts, p.parse_args([])) == _Opts()
    assert "--hidden-only" not in p.format_help() and "how many (default: 3)" in p.format_help()
    for bad in (["--count", "0"], ["--mode", "c"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)


def test_a_file_is_checked_like_the_flags():
    assert check_mapping(_Opts, {"count": 4.0, "mode": "b"}, "f.json") == {"count": 4, "mode": "b"}
    for data, match in (({"cuont": 1}, "f.json: unknown setting 'cuont'"), ({"count": -1}, "f.json: count"),
                        ({"count": "many"}, "f.json: count"), ({"mode": "c"}, "f.json: mode must be one of a, b"),
                        ({"verbose": "yes"}, "verbose must be true or false"), ([1], "expected a JSON object")):
        with pytest.raises(cli.UserError, match=match):
            check_mapping(_Opts, data, "f.json")
    assert check_mapping(_Opts, {"cuont": 1}, "f.json", strict=False) == {}


def test_settings_resolve_in_layers_and_choices_come_from_the_registries(tmp_path):
    from msa.fusions import FUSIONS
    from msa.losses import LOSSES

    p = cli.ArgumentParser()
    add_model_args(p)
    add_training_args(p)
    choices = {a.dest: a.choices for a in p._actions}
    assert list(choices["feature_fusion"]) == sorted(FUSIONS) and list(choices["loss_type"]) == sorted(LOSSES)
    assert "cross_attention" in choices["feature_fusion"] and "bogus" not in choices["feature_fusion"]
    assert list(choices["scheduler"]) == ["cosine", "linear", "constant"]
    preset = tmp_path / "p.json"
    preset.write_text(json.dumps({"name": "x", "hidden": 64, "fusion": "add", "learning_rate": 0.01}))
    s = resolve(p.parse_args(["--preset", str(preset), "--learning-rate", "0.002"]), base={"dropout": 0.5,
                                                                                          "stale_key": 1})
    assert isinstance(s, Settings)
    assert (s.hidden, s.feature_fusion, s.learning_rate, s.dropout, s.batch_size) == (64, "add", 0.002, 0.5, 64)
    assert dict(s) == s.to_dict() and {**s}["hidden"] == 64 and s["feature_fusion"] == "add"
    assert Settings.from_dict(json.loads(json.dumps(s.to_dict()))) == s  # what run folders record rebuilds it
    cfg = s.train_config(7)
    assert (cfg.learning_rate, cfg.seed, cfg.batch_size) == (0.002, 7, 64)
    assert Settings().to_dict() == DEFAULTS
    with pytest.raises(cli.UserError, match="hidden"):
        s.replace(hidden=0)
    with pytest.raises(cli.UserError, match="feature_fusion must be one of"):
        Settings.from_dict({"feature_fusion": "nope"}, "preset q.json")


# ----------------------------------------------------------------------------------------------- the loop
class _Scripted:
    """An adapter whose epochs score as scripted."""

    def __init__(self, scores):
        self.scores, self.kept, self.ended = list(scores), [], []

    def run_epoch(self, epoch):
        return {"epoch": epoch}, self.scores[epoch - 1]

    def keep(self, epoch, row, score):
        self.kept.append(epoch)

    def end_epoch(self, epoch, row, state):
        self.ended.append(epoch)


def test_the_loop_keeps_the_best_epoch_and_stops_after_patience():
    task = _Scripted([0.1, 0.3, 0.3 + 1e-9, 0.2, 0.25, 0.9])
    state = run_epochs(task, epochs=6, patience=3)
    assert (state.best_epoch, state.best_score, state.stopped) == (2, 0.3, True)
    assert task.kept == [1, 2] and task.ended == [1, 2, 3, 4, 5] and len(state.history) == 5
    # patience 0 never stops; a smaller tolerance counts the tiny gain
    task = _Scripted([0.1, 0.3, 0.3 + 1e-9, 0.2, 0.25, 0.9])
    state = run_epochs(task, epochs=6, patience=0, tol=1e-12)
    assert task.kept == [1, 2, 3, 6] and not state.stopped and state.best_epoch == 6


def test_a_resumed_loop_continues_where_it_stopped():
    scores = [0.5, 0.4, 0.6, 0.55, 0.7]
    whole = run_epochs(_Scripted(scores), epochs=5, patience=2)
    first = run_epochs(_Scripted(scores), epochs=3, patience=2)
    rest = run_epochs(_Scripted(scores), epochs=5, patience=2, state=first)
    assert (rest.best_epoch, rest.best_score, len(rest.history)) == (whole.best_epoch, whole.best_score, 5)
    done = LoopState(stale=2, next_epoch=4, best_score=0.9, best_epoch=1)
    task = _Scripted(scores)
    assert run_epochs(task, epochs=5, patience=2, state=done).stopped and task.ended == []
    assert LoopState().best_score == -math.inf


# ----------------------------------------------------------------------------------------------- workers
def _square(shared, job):
    if job == "boom":
        raise ValueError("job failed")
    return job * job + shared["offset"], shared["inline"]


def test_jobs_come_back_in_order_inline_and_in_processes():
    inline = run_jobs(_square, [3, 1, 2], {"offset": 10}, n_jobs=1, desc=None)
    assert inline == [(19, True), (11, True), (14, True)]
    pooled = run_jobs(_square, [3, 1, 2], {"offset": 10}, n_jobs=2, desc=None)
    assert [r for r, _ in pooled] == [19, 11, 14] and not any(i for _, i in pooled)
    for n in (1, 2):
        with pytest.raises(ValueError, match="job failed"):
            run_jobs(_square, [1, "boom"], {"offset": 0}, n_jobs=n, desc=None)


def test_workers_fork_from_a_preloaded_server_or_spawn_with_the_same_results(monkeypatch):
    from msa import workers

    monkeypatch.delenv(workers.START_METHOD_ENV, raising=False)
    assert workers.context().get_start_method() == "forkserver"  # Linux has one
    workers.prestart(2)
    forked = run_jobs(_square, [3, 1, 2], {"offset": 10}, n_jobs=2, desc=None)
    monkeypatch.setenv(workers.START_METHOD_ENV, "spawn")
    assert workers.context().get_start_method() == "spawn"
    assert run_jobs(_square, [3, 1, 2], {"offset": 10}, n_jobs=2, desc=None) == forked
    monkeypatch.setenv(workers.START_METHOD_ENV, "fork")
    with pytest.raises(cli.UserError, match="forkserver or spawn"):  # one error line from a stage, no traceback
        workers.context()


def _token_sum(shared, job):
    return float(sum(t.double().sum() for t in shared["fs"].tokens["text"][job::2]))


def test_features_with_thousands_of_token_sequences_reach_forked_workers_whole():
    """A fork server passes at most 256 file descriptors to a new worker; a FeatureSet is pickled with each
    modality's sequences as one tensor, so phase 2's token fusions (one sequence per post) still get their
    features, equal to the parent's."""
    import torch

    from msa.features import FeatureSet

    gen = torch.Generator().manual_seed(0)
    seqs = [torch.randn(int(torch.randint(1, 6, (1,), generator=gen)), 8, generator=gen) for _ in range(1200)]
    fs = FeatureSet(guids=[str(i) for i in range(1200)], pooled={"text": torch.zeros(1200, 8)}, tokens={"text": seqs})
    expected = [float(sum(t.double().sum() for t in seqs[j::2])) for j in (0, 1)]
    assert run_jobs(_token_sum, [0, 1], {"fs": fs}, n_jobs=2, desc=None) == expected
    assert [float(sum(t.double().sum() for t in fs.tokens["text"][j::2])) for j in (0, 1)] == expected


def test_a_pool_starts_the_dearest_jobs_first_and_answers_in_job_order(monkeypatch):
    """run_jobs(cost=...): jobs go to the workers longest first (no worker left alone with a long job at the end);
    run_groups prices a run by its fusion's cost times its epochs."""
    import concurrent.futures

    from msa import experiment

    submitted = []

    class Recording(concurrent.futures.ThreadPoolExecutor):  # the pool's interface, in threads, recording the order
        def __init__(self, n, mp_context=None, initializer=None, initargs=()):
            super().__init__(n, initializer=initializer, initargs=initargs)

        def submit(self, fn, *args):
            submitted.append(args[0])
            return super().submit(fn, *args)

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", Recording)
    # the pool's initializer now runs in this process: keep its effects (the jobs' shared state, msa's log level)
    # out of the other tests
    from msa import workers

    monkeypatch.setattr(workers, "_SHARED", {})
    msa_log = logging.getLogger("msa")
    monkeypatch.setattr(msa_log, "setLevel", lambda level: None)
    out = run_jobs(_square, [3, 1, 2, 5], {"offset": 10}, n_jobs=2, desc=None, cost=[3.0, 1.0, 2.0, 5.0])
    assert [r for r, _ in out] == [19, 11, 14, 35]
    assert submitted == [5, 3, 2, 1]
    submitted.clear()
    run_jobs(_square, [3, 1], {"offset": 0}, n_jobs=2, desc=None)
    assert submitted == [3, 1]  # no cost: the jobs' own order

    def spec(fusion, epochs):
        return experiment.RunSpec(Path("r"), {"feature_fusion": fusion, "num_epochs": epochs}, 42)

    costs = [experiment._cost(spec(f, e)) for f, e in (("add", 10), ("cross_attention", 10), ("encoder", 30))]
    assert costs[0] < costs[1] < costs[2]
    assert experiment._cost(experiment.RunSpec(Path("r"), Settings.from_dict({}, strict=False), 1)) > 0


def test_grids_of_several_groups_train_as_one_pool_with_each_groups_inputs(monkeypatch, tmp_path):
    """run_groups: every spec trains on its own group's features, data and record; results per group in order."""
    from types import SimpleNamespace

    from msa import experiment

    seen = []

    def fake_train_run(run_dir, fs, data, *, args_record, train_cfg, **kw):
        seen.append((run_dir.name, fs, data.name, args_record["group"], train_cfg.seed))
        return {"metrics": {"weighted_f1": train_cfg.seed / 100 + len(data.name)}}

    monkeypatch.setattr(experiment, "train_run", fake_train_run)
    settings = Settings.from_dict({}, strict=False)
    groups = {}
    for name, seeds in (("a", [1, 2]), ("bb", [3])):
        specs = [experiment.RunSpec(tmp_path / f"{name}-s{seed}", settings, seed, tag=name) for seed in seeds]
        groups[name] = (specs, f"features-{name}", SimpleNamespace(name=name), {"group": name})
    out = experiment.run_groups(groups, jobs=1, desc=None)
    assert [r["seed"] for r in out["a"]] == [1, 2] and [r["seed"] for r in out["bb"]] == [3]
    assert [r["weighted_f1"] for r in out["a"]] == [1.01, 1.02] and out["bb"][0]["tag"] == "bb"
    assert seen == [("a-s1", "features-a", "a", "a", 1), ("a-s2", "features-a", "a", "a", 2),
                    ("bb-s3", "features-bb", "bb", "bb", 3)]
    single = experiment.run_grid(groups["a"][0], "features-a", SimpleNamespace(name="a"), record={"group": "a"},
                                 desc=None)
    assert single == out["a"]


# ----------------------------------------------------------------------------------------------- records
def _best(**kw):
    rec = dict(method="focal-none", seed=42, select_metric="weighted_f1", value=0.7, selected_by="mean",
               run_dir="phase3/results/runs/focal-none-s42", copied_to="phase3/results/best",
               checkpoint="phase3/results/best/checkpoint", seed_runs=["runs/a", "runs/b"], seeds=[42, 43],
               metrics={"weighted_f1": 0.7}, method_mean={"weighted_f1": {"mean": 0.69, "std": 0.01}},
               settings=dict(DEFAULTS), loss_kw={}, split="default", split_sha256="ab" * 32)
    rec.update(kw)
    return rec


def test_best_record_round_trip_and_clear_errors(tmp_path):
    rec = BestRecord(**_best(), extra={"loss": "focal", "sampler": "none"})
    path = write_best(tmp_path, rec)
    assert path.name == "best.json" and json.loads(path.read_text())["sampler"] == "none"
    assert read_best(path) == rec
    broken = _best()
    del broken["seed_runs"]
    path.write_text(json.dumps(broken))
    with pytest.raises(cli.UserError, match="has no 'seed_runs'"):
        read_best(path)
    path.write_text(json.dumps(_best(seed_runs="runs/a")))
    with pytest.raises(cli.UserError, match="'seed_runs' must be a list"):
        read_best(path)
    path.write_text("{")
    with pytest.raises(cli.UserError, match="cannot be read"):
        read_best(path)
    with pytest.raises(cli.UserError, match="not found"):
        read_best(tmp_path / "nope.json")


def test_run_folder_layout(tmp_path):
    run = RunFolder(tmp_path / "r")
    assert run.checkpoint == tmp_path / "r" / "checkpoint" and run.config.name == "config.json"
    assert RunFolder.of_checkpoint(run.checkpoint) == run


def test_data_and_output_flags_come_from_their_dataclasses(tmp_path):
    from pathlib import Path

    from msa.config import DataSettings, OutputDirs, add_output_dirs

    p = cli.ArgumentParser()
    cli.add_data_args(p)
    o = p.add_argument_group("output")
    add_output_dirs(o, tmp_path / "phaseX", "where the tables go")
    ns = p.parse_args(["--split", "cv5-2"])
    assert from_args(DataSettings, ns) == DataSettings(split="cv5-2")
    assert from_args(OutputDirs, ns) == OutputDirs(tmp_path / "phaseX" / "results", tmp_path / "phaseX" / "figures")
    assert isinstance(p.parse_args(["--results-dir", "r"]).results_dir, Path)
    assert "where the tables go" in p.format_help() and "where the figures go" in p.format_help()
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit):
        p.parse_args(["--work-dir", str(tmp_path / "file")])  # a file is not a work folder
