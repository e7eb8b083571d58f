"""The pipeline's stages in one ordered registry: what each is called, which scripts run it, where its results,
figures and summary go, how to read it, and which model it leaves behind.

`make run` runs the stages in this order (a test holds the Makefile to it); the default model of
``phase4/predict_test.py`` is the last stage's model that exists (:func:`default_model`); the report
(:mod:`msa.report`) has one section per stage; the demo copies each stage's folder; and the ``msa`` command
(:mod:`msa.commands`) runs any stage's scripts by name. Adding a stage means adding one entry here (and its
script and Makefile target).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from msa.cli import REPO_ROOT


@dataclass(frozen=True)
class Stage:
    name: str  # the folder of its scripts and the Makefile target
    title: str
    #: ``(command, script)``: the scripts that run it, in order, by the name the ``msa`` command knows them by
    commands: tuple[tuple[str, str], ...]
    summaries: tuple[str, ...]  # the report shows the first that exists
    figures: tuple[str, ...]  # the figure folder at the found summary's position
    how_to_read: str
    #: the model the stage leaves behind: a checkpoint folder (``model.safetensors``) or an ensemble folder
    model: str | None = None
    extras: tuple[str, ...] = field(default_factory=tuple)  # further pages shown after the summary
    model_kind: str = "checkpoint"  # or "ensemble" (a folder of members, msa.ensemble)


STAGES: tuple[Stage, ...] = (
    Stage("phase0", "Phase 0: dataset audit",
          (("phase0", "phase0/data_cleaner.py"), ("phase0-analysis", "phase0/data_analysis.py")),
          ("phase0/results/data_summary.md",), ("phase0/figures",),
          "What was read, removed and why; the persisted split every later number is measured on."),
    Stage("phase1", "Phase 1: baseline", (("phase1", "phase1/main.py"),),
          ("phase1/results/Phase1_Baseline_summary.md",), ("phase1/figures",),
          "The seed's baseline recipe (concat fusion, cross-entropy) on the frozen offline backbones.",
          model="phase1/results/best/checkpoint"),
    Stage("phase2", "Phase 2: fusion and hyper-parameter search",
          (("phase2", "phase2/run_phase2.py"), ("phase2-search", "phase2/search_hyperparam.py")),
          ("phase2/results/summary.md",), ("phase2/figures",),
          "Every fusion with the same settings and seeds, then an Optuna search on the best one.",
          extras=("phase2/results/search_summary.md",)),
    Stage("phase3", "Phase 3: class-imbalance losses", (("phase3", "phase3/run_phase3.py"),),
          ("phase3/results/summary.md",), ("phase3/figures",),
          "Each loss x sampler over seeds; the differences to CE come with their standard errors.",
          model="phase3/results/best/checkpoint"),
    Stage("phase4", "Phase 4: hard samples and caption augmentation", (("phase4", "phase4/run_phase4.py"),),
          ("phase4/results/summary.md",), ("phase4/figures",),
          "Fine-tuning from phase 3 with captions of hard training posts; `none` is the no-caption control.",
          model="phase4/results/best/checkpoint"),
    Stage("phase5", "Phase 5: modality ablation", (("phase5", "phase5/run_phase5.py"),),
          ("phase5/results/ablation.md",), ("phase5/figures",),
          "Masking one modality of the trained model vs retraining without it."),
    Stage("phase6", "Phase 6: CLIP linear probes", (("phase6", "phase6/run_phase6.py"),),
          ("phase6/results/summary.md",), ("phase6/figures",),
          "Linear probes on frozen embeddings (CLIP when its folder exists) against the phase-4 model."),
    Stage("final", "Final recipe: cross-validated", (("final", "final/run_final.py"),),
          ("final/ablation/summary.md", "final/results/summary.md"), ("final/ablation/figures", "final/figures"),
          "The recipe predict.txt comes from, measured by 5-fold CV (early stopping and any decision rule on inner "
          "validation data, each post held out once); each further row adds, removes or swaps one part of the "
          "recipe (Δ weighted F1 against the recipe on the same folds). Then where its held-out errors are: per "
          "class, by slice, and the most confident mistakes with their texts.",
          model="final/results/best", extras=("final/results/errors.md",), model_kind="ensemble"),
)

#: commands that are not stages: front ends over the stages' outputs, and the two neighbouring tasks
FRONT_ENDS: dict[str, str] = {
    "predict": "phase4/predict_test.py", "trend": "tasks/trend/run_trend.py",
    "trend-data": "tasks/trend/make_trend_data.py", "mosi": "tasks/mosi/run_mosi.py",
    "bench-pipeline": "benchmarks/bench_pipeline.py", "bench-features": "benchmarks/bench_features.py",
    "bench-predict": "benchmarks/bench_predict.py",
}


def stage(name: str) -> Stage:
    for s in STAGES:
        if s.name == name:
            return s
    raise KeyError(name)


def commands() -> dict[str, str]:
    """Every command the ``msa`` front end knows, in pipeline order: name -> script relative to the repository."""
    out = {cmd: script for s in STAGES for cmd, script in s.commands}
    out.update(FRONT_ENDS)
    return out


def model_dirs(root: Path = REPO_ROOT, kinds: tuple[str, ...] = ("checkpoint", "ensemble")) -> list[Path]:
    """The stages' model folders of the given kinds, the latest stage first."""
    return [root / s.model for s in reversed(STAGES) if s.model and s.model_kind in kinds]
