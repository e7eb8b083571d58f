"""The modality-ablation stage (phase 5): which checkpoints and run folders it reads, the masking runs, the
retrained runs, the summary table, its notes and figures. ``phase5/run_phase5.py`` is the front end (flags, the
up-to-date check, writing the files); the building blocks (substitutes, recipes, seed runs) are in
:mod:`msa.ablation`.

* :func:`find_model`: the checkpoint to ablate and the seed checkpoints behind it (:class:`Model`);
* :func:`make_plan`: those checked against the split, with the recipe and seeds of the retrained models
  (:class:`Plan`);
* :func:`ablation_features`: the features of every labelled post (with side features when the model has them);
* :func:`masking_runs` / :func:`masking_rows`: (a), one row per checkpoint x condition, and its summary rows;
* :func:`retrain`: (b), the retrained models over seeds, and their summary rows;
* :func:`summary_table`, :func:`notes`, :func:`markdown`, :func:`summary_json`, :func:`figures`: what is written.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from msa import cli

log = logging.getLogger("phase5")  # the stage's messages keep the name they have always had
MODALITIES = ("text", "image")
METRICS = (("accuracy", "accuracy"), ("weighted_precision", "weighted precision"),
           ("weighted_recall", "weighted recall"), ("weighted_f1", "weighted F1"), ("macro_f1", "macro F1"),
           ("f1_neutral", "neutral F1"))
CONDITIONS = ((None, None), ("text", "zeros"), ("text", "train_mean"), ("image", "zeros"), ("image", "train_mean"))
RETRAINED = (("multimodal", ("text", "image")), ("text", ("text",)), ("image", ("image",)))
#: a model with a numeric side branch (msa.side): the side inputs are masked too, and retrained without them
SIDE_CONDITIONS = (("side", "zeros"), ("side", "train_mean"))
SIDE_RETRAINED = (("multimodal_side", ("text", "image", "side")),)
DEFAULT_SEEDS = "42,43,44"
SECTION_TITLES = {"masking": "(a) masking: the trained model, one modality replaced",
                  "retrained": "(b) retrained from scratch with the same recipe"}


def condition_name(modality: str | None, how: str | None) -> str:
    from msa.ablation import SUBSTITUTES

    return "full model" if modality is None else f"{modality} masked ({SUBSTITUTES[how]})"


def retrained_name(kind: str) -> str:
    return {"multimodal": "retrained text + image", "text": "retrained text only",
            "image": "retrained image only", "multimodal_side": "retrained text + image + side"}[kind]


# ----------------------------------------------------------------------------------------------- inputs
@dataclass
class Model:
    """The model to ablate: its checkpoint and config, and the checkpoints of every seed behind it (one per seed
    run listed in ``seed_source``, a best.json; else just the checkpoint)."""
    checkpoint: Path
    config: dict
    checkpoints: list[Path]
    configs: list[dict]
    seed_source: Path | None

    @property
    def several(self) -> bool:
        """Whether the masking runs are over the seed runs of a best.json (else: one checkpoint, n = 1)."""
        return self.seed_source is not None and len(self.checkpoints) > 1

    def input_files(self) -> list[Path]:
        """The files the stage reads from the model (for the up-to-date stamp)."""
        return ([c / "model.safetensors" for c in self.checkpoints] + [c.parent / "config.json" for c in
                self.checkpoints] + ([Path(self.seed_source)] if self.seed_source else []))


def find_model(checkpoint: Path | None) -> Model:
    """The model of ``--checkpoint`` (a checkpoint or run folder; ``None``: the latest stage's best model) and
    its seed checkpoints. A missing or incomplete folder is one clear error."""
    from msa.ablation import seed_checkpoints
    from msa.checkpoint import read_checkpoint_config
    from msa.predict import default_checkpoint

    checkpoint = Path(checkpoint) if checkpoint is not None else default_checkpoint()
    if not (checkpoint / "model.safetensors").is_file() and (checkpoint / "checkpoint" / "model.safetensors").is_file():
        checkpoint = checkpoint / "checkpoint"  # a run folder was given
    config = read_checkpoint_config(checkpoint)
    ckpts, seed_source = seed_checkpoints(checkpoint)
    return Model(checkpoint, config, ckpts, [read_checkpoint_config(c) for c in ckpts], seed_source)


def check_checkpoint(ckpt: Path, config: dict, data) -> dict | None:
    """Refuse a checkpoint this phase cannot evaluate honestly; returns its run folder's config (or None)."""
    from msa.ablation import run_config
    from msa.data import LABELS
    from msa.features import TEXT_NORMALISATION

    if list(config.get("labels", [])) != list(LABELS):
        raise cli.UserError(f"{ckpt} predicts labels {config.get('labels')}, this project uses {list(LABELS)}")
    if config.get("text_normalisation", TEXT_NORMALISATION) != TEXT_NORMALISATION:
        raise cli.UserError(f"{ckpt} was trained with another text normalisation; retrain it with this version")
    names = [s["name"] for s in config["model"]["specs"]]
    if sorted(names) != sorted(MODALITIES):
        raise cli.UserError(f"{ckpt} is a model of modalities {names}; phase 5 ablates a text + image model")
    rc, rc_path = run_config(ckpt)
    if rc is None:
        log.warning("%s not found: cannot check that %s was trained on split %r", rc_path, ckpt, data.split.name)
        return None
    split = rc.get("split") or {}
    if split.get("sha256") not in (None, data.split.sha256):
        raise cli.UserError(f"{ckpt} was trained on split {split.get('name')!r} (sha256 {str(split['sha256'])[:12]}), "
                            f"not on split {data.split.name!r} ({data.split.sha256[:12]}): its validation posts "
                            f"would include posts it trained on; pass --split {split.get('name')}")
    return rc


def default_seeds(seeds_arg: str | None, seed_source, run_configs: list[dict | None], rec: dict | None
                  ) -> tuple[list[int], str]:
    """The seeds of the retrained models and where they come from."""
    from msa.settings import parse_seeds

    if seeds_arg:
        return parse_seeds(seeds_arg), "--seeds"
    if seed_source is not None and len(run_configs) > 1 and all(rc and "seed" in rc for rc in run_configs):
        return [int(rc["seed"]) for rc in run_configs], f"the seed runs of {seed_source}"
    if rec and rec["seeds"]:
        return list(rec["seeds"]), "the --seeds of the model's run"
    return parse_seeds(DEFAULT_SEEDS), "the default (the model's run records no seeds)"


@dataclass
class Plan:
    """What the stage runs: the model, its checkpoints' run configs, the recipe of the retrained models (``None``:
    no retraining) and the run config it came from, and the seeds of the retrained models."""
    model: Model
    run_configs: list[dict | None]
    recipe: dict | None
    recipe_from: Path | None
    seeds: list[int]
    seeds_from: str
    tokens: list[str] = field(default_factory=list)  # the token modalities the features carry

    @property
    def side(self) -> dict | None:
        return self.model.config.get("side_features")

    @property
    def modalities(self) -> tuple[str, ...]:
        return (*MODALITIES, "side") if self.side else MODALITIES

    @property
    def conditions(self) -> tuple:
        return CONDITIONS + (SIDE_CONDITIONS if self.side else ())

    @property
    def retrain(self) -> tuple:
        return (SIDE_RETRAINED + RETRAINED) if self.side else RETRAINED


def check_model(model: Model, data) -> tuple[list[dict | None], dict | None]:
    """Every checkpoint checked against ``data``'s split and the model's backbones; their run configs, and that of
    the model's own checkpoint."""
    run_configs = [check_checkpoint(c, cfg, data) for c, cfg in zip(model.checkpoints, model.configs)]
    primary_rc = check_checkpoint(model.checkpoint, model.config, data)
    for c, cfg in zip(model.checkpoints, model.configs):
        if cfg.get("backbones") != model.config.get("backbones"):
            raise cli.UserError(f"seed checkpoint {c} was trained on other backbones than {model.checkpoint}")
    if model.several:
        log.info("masking: %d seed checkpoints listed in %s", len(model.checkpoints), model.seed_source)
    else:
        log.info("masking: one checkpoint %s (%s)", model.checkpoints[0],
                 f"{model.seed_source} has no 'seed_runs'" if model.seed_source else "no best.json describes it")
    return run_configs, primary_rc


def retrain_recipe(model: Model, run_configs: list[dict | None], primary_rc: dict | None,
                   recipe_run: Path | None) -> tuple[dict, Path]:
    """The recipe of the retrained models and the run config it is read from: ``recipe_run``'s, else that of the
    model's run (for a fine-tuned model, of the run its fine-tuning started from)."""
    from msa.ablation import recipe, recipe_config, run_config

    chain_notes: list[str] = []
    if recipe_run is not None:
        rc, rc_path = run_config(Path(recipe_run) / "checkpoint")
    else:
        rc, rc_path, chain_notes = recipe_config(model.checkpoint if primary_rc else next(
            (c for c, r in zip(model.checkpoints, run_configs) if r), model.checkpoint))
    if rc is None:
        raise cli.UserError(f"{rc_path} not found: the recipe of {model.checkpoint} is unknown, so the retrained "
                            "models of (b) cannot be trained; pass --recipe-run DIR, or --skip-retrain for the "
                            "masking ablation only")
    rec = recipe(rc, model.config)
    rec["notes"] = chain_notes + rec["notes"]
    return rec, rc_path


def make_plan(model: Model, data, skip_retrain: bool, recipe_run: Path | None, seeds_arg: str | None) -> Plan:
    """The checks of :func:`check_model`, the recipe (unless ``skip_retrain``) and the seeds."""
    from msa.experiment import token_modalities

    run_configs, primary_rc = check_model(model, data)
    rec = rc_path = None
    if not skip_retrain:
        rec, rc_path = retrain_recipe(model, run_configs, primary_rc, recipe_run)
    seeds, seeds_from = default_seeds(seeds_arg, model.seed_source, run_configs, rec)
    # the tokens the checkpoints' fusions need, and those of the recipe's
    tokens = sorted({m for cfg in model.configs for m in cfg.get("token_modalities", [])}
                    | set(token_modalities(rec["settings"]["feature_fusion"]) if rec else []))
    return Plan(model, run_configs, rec, rc_path, seeds, seeds_from, tokens)


def ablation_features(plan: Plan, data, data_dir: Path, cache_dir: Path, batch_size: int):
    """The features of every labelled post with the checkpoint's backbones, the tokens of ``plan.tokens`` and
    the model's side features (when it has them)."""
    from msa import side as side_mod
    from msa.experiment import labelled_features
    from msa.predict import backbones_for

    model = plan.model
    tb, ib = backbones_for(model.config, cache_dir)
    fs = labelled_features(data_dir, data.guids, tb, ib, cache_dir, plan.tokens, batch_size)
    for c, cfg in zip(model.checkpoints, model.configs):
        if cfg.get("side_features") != plan.side:
            raise cli.UserError(f"seed checkpoint {c} was trained with other side features than {model.checkpoint}")
    return side_mod.attach(fs, side_mod.for_checkpoint(model.config, data.guids, data_dir, cache_dir))


# ----------------------------------------------------------------------------------------------- (a) masking
def _recorded_weighted_f1(ck: Path) -> float | None:
    """The weighted F1 the checkpoint's own run recorded in its metrics.json (``None``: no such file)."""
    metrics_file = ck.parent / "metrics.json"
    if metrics_file.is_file():
        return json.loads(metrics_file.read_text(encoding="utf-8")).get("weighted_f1")
    return None


def _prediction_frame(row: dict, data, pred, proba):
    import pandas as pd

    from msa.data import LABELS

    frame = pd.DataFrame({"checkpoint": row["checkpoint"], "seed": row["seed"], "condition": row["condition"],
                          "guid": [data.guids[i] for i in data.val_idx],
                          "label": [LABELS[k] for k in data.labels[data.val_idx]],
                          "pred": [LABELS[k] for k in pred]})
    for k, lab in enumerate(LABELS):
        frame[f"p_{lab}"] = proba[:, k].round(6)
    return frame


def _mask_checkpoint(ck: Path, cfg: dict, rc: dict | None, fs, data, conditions) -> tuple[list[dict], list]:
    """One checkpoint under every condition: its rows of masking_runs.csv and its prediction frames."""
    from msa.ablation import substitute
    from msa.checkpoint import load_checkpoint
    from msa.data import LABELS
    from msa.metrics import classification_metrics
    from msa.trainer import predict_rows

    model, _ = load_checkpoint(ck)
    ck_tokens = cfg.get("token_modalities", model.token_modalities)
    recorded = _recorded_weighted_f1(ck)
    y_val = data.labels[data.val_idx]
    rows, frames = [], []
    for modality, how in conditions:
        feats = fs if modality is None else substitute(fs, modality, how, data.train_idx)
        proba = predict_rows(model, feats, data.val_idx, ck_tokens)
        pred = proba.argmax(1)
        m = classification_metrics(y_val, pred, proba, labels=LABELS)
        row = {"checkpoint": str(ck), "seed": (rc or {}).get("seed"), "condition": condition_name(modality, how),
               "modality": modality or "", "substitute": how or "",
               **{k: v for k, v in m.items() if isinstance(v, (int, float))}}
        if modality is None and recorded is not None:
            row["recorded_weighted_f1"] = recorded
            if abs(recorded - m["weighted_f1"]) > 1e-4:
                log.warning("%s: weighted F1 %.4f here, %.4f in its metrics.json (features changed?)", ck,
                            m["weighted_f1"], recorded)
        rows.append(row)
        frames.append(_prediction_frame(row, data, pred, proba))
    return rows, frames


def masking_runs(plan: Plan, fs, data):
    """(a): every seed checkpoint evaluated on the validation split under every condition. Returns the runs (one
    row per checkpoint x condition) and the predictions (one row per post x checkpoint x condition)."""
    import pandas as pd

    rows, frames = [], []
    for ck, cfg, rc in zip(plan.model.checkpoints, plan.model.configs, plan.run_configs):
        r, f = _mask_checkpoint(ck, cfg, rc, fs, data, plan.conditions)
        rows += r
        frames += f
    return pd.DataFrame(rows), pd.concat(frames, ignore_index=True)


def summary_row(section: str, model: str, inputs: str, fusion: str, runs: list[dict], note: str = "") -> dict:
    from msa.metrics import summarise_runs

    s = summarise_runs(runs)
    row = {"section": section, "model": model, "inputs": inputs, "fusion": fusion, "n": len(runs)}
    for key, _ in METRICS:
        row[f"{key}_mean"] = s[key]["mean"]
        row[f"{key}_std"] = s[key]["std"]
    row["note"] = note
    return row


def masking_rows(plan: Plan, masking) -> list[dict]:
    """The summary rows of (a), one per condition, from the masking runs."""
    from msa.ablation import SUBSTITUTES

    model, all_mods = plan.model, plan.modalities
    n_note = (f"{len(model.checkpoints)} seed checkpoints from {model.seed_source}" if model.several
              else "single checkpoint: n = 1, std 0")
    rows = []
    for modality, how in plan.conditions:
        name = condition_name(modality, how)
        runs = masking[masking["condition"] == name].to_dict(orient="records")
        inputs = " + ".join(all_mods) if modality is None else \
            " + ".join([m for m in all_mods if m != modality] + [f"{SUBSTITUTES[how]} {modality}"])
        rows.append(summary_row("masking", name, inputs, model.config["model"]["fusion"], runs, n_note))
    return rows


# ----------------------------------------------------------------------------------------------- (b) retrained
def _mixed_precision(rec: dict) -> str:
    """The recipe's mixed precision (bf16 runs on a CPU too), or ``"no"`` for fp16 without a GPU."""
    mixed = rec["mixed_precision"]
    if mixed == "fp16":
        import torch

        if not torch.cuda.is_available():
            log.warning("the recipe used mixed precision fp16; no GPU here, so the retrained runs use full "
                        "precision")
            mixed = "no"
    return mixed


def seed_sibling(recipe_config: Path | None, seed: int) -> Path | None:
    """The run folder next to the recipe's run (``<name>-s<seed>/config.json``, e.g. phase 3's) for ``seed``:
    a retrained model that is the same run as one there (the recipe's own modalities and seed) is copied from
    it, not trained again (:func:`msa.experiment.reuse_run` checks that the configs agree)."""
    import re

    if recipe_config is None:
        return None
    folder = Path(recipe_config).parent
    source = folder / "SOURCE"  # a copy (msa.checkpoint.copy_run_dir, e.g. phase 3's best/): the run it copies
    if source.is_file():
        try:
            folder = Path(source.read_text(encoding="utf-8").strip())
        except OSError:
            return None
    m = re.fullmatch(r"(.*-s)\d+", folder.name)
    return folder.with_name(f"{m.group(1)}{seed}") if m else None


def retrain(plan: Plan, fs, data, runs_dir: Path, record: dict, jobs: int, resume: bool):
    """(b): a model per entry of ``plan.retrain`` and seed, trained from scratch with the recipe into
    ``runs_dir/<kind>-s<seed>``; ``record`` (the arguments) goes into each run's config. Returns the runs (one
    row per model x seed, for retrained_runs.csv) and the summary rows, one per model."""
    import pandas as pd

    from msa.ablation import only, unimodal_fusion
    from msa.experiment import RunSpec, run_groups

    rec, seeds = plan.recipe, plan.seeds
    s = rec["settings"]
    uni = unimodal_fusion(s["feature_fusion"])
    mixed = _mixed_precision(rec)
    base_record = {**record, "seeds": ",".join(map(str, seeds))}
    groups, meta = {}, {}
    for kind, mods in plan.retrain:
        name = retrained_name(kind)
        fusion = s["feature_fusion"] if len([m for m in mods if m != "side"]) > 1 else uni
        settings = {**s, "feature_fusion": fusion, "side_features": s.get("side_features", "") if "side" in mods
                    else ""}
        rec_kind = {**base_record, "resolved": settings,
                    "ablation": {"model": name, "modalities": list(mods), "recipe_from": str(plan.recipe_from),
                                 "checkpoint": str(plan.model.checkpoint)}}
        specs = [RunSpec(runs_dir / f"{kind}-s{seed}", settings, seed, loss_kw=rec["loss_kw"], light=False,
                         tag=kind, mixed_precision=mixed, resume=resume,
                         same_as=seed_sibling(plan.recipe_from, seed)) for seed in seeds]
        groups[kind] = (specs, only(fs, mods), data, rec_kind)
        meta[kind] = (name, mods, fusion)
    outs = run_groups(groups, jobs=jobs, desc="phase 5 model x seed")  # one pool for every model
    results, rows = [], []
    for kind, (name, mods, fusion) in meta.items():
        out = outs[kind]
        results += [{"model": name, "modalities": "+".join(mods), "fusion": fusion, **r} for r in out]
        note = f"seeds {', '.join(map(str, seeds))}"
        same = [r["same_as"] for r in out if r.get("same_as")]
        if same:
            note += f"; {len(same)} of them the same runs as {Path(same[0]).parent} (copied, not trained again)"
        if fusion != s["feature_fusion"]:
            note += f"; {s['feature_fusion']} needs two modalities, so {fusion}"
        rows.append(summary_row("retrained", name, " + ".join(mods), fusion, list(out), note))
    retrained = pd.DataFrame(results).drop(columns=["confusion_matrix", "labels", "tag"], errors="ignore")
    return retrained, rows


# ----------------------------------------------------------------------------------------------- tables
def summary_table(rows: list[dict]):
    """The rows of ablation.csv, with ``is_reference`` (the first row of its section) and ``delta_weighted_f1``
    (against that row)."""
    import pandas as pd

    table = pd.DataFrame(rows)
    table["is_reference"] = ~table.duplicated("section")
    ref = table.groupby("section", sort=False)["weighted_f1_mean"].transform("first")
    table["delta_weighted_f1"] = table["weighted_f1_mean"] - ref
    return table


def _masking_notes(plan: Plan, data) -> list[str]:
    model = plan.model
    if model.several:
        first = (f"Masking: the model `{model.checkpoint}`, evaluated for each of the {len(model.checkpoints)} seed "
                 f"runs listed in `{model.seed_source}` (\"seed_runs\").")
    else:
        why = f"`{model.seed_source}` has no \"seed_runs\"" if model.seed_source else \
            "no best.json lists seed runs for it"
        first = f"Masking: the single checkpoint `{model.checkpoint}` (n = 1, so std is 0: {why})."
    tok_note = f"; token sequences of {', '.join(plan.tokens)} become one such token (mask True)" if plan.tokens \
        else ""
    return [first, f"Substitutes replace the modality's input features for every validation post: zeros, or the mean "
                   f"of its {len(data.train_idx)} training-split feature vectors{tok_note}. Both carry no information "
                   "about the post; zeros lie far from anything seen in training, the mean lies in the middle of the "
                   "training inputs, so the gap between the two rows of a modality is the part of its drop that "
                   "depends on the substitute's distribution shift rather than on the missing information."]


def _retrain_notes(plan: Plan, runs_dir: Path) -> list[str]:
    from msa.ablation import unimodal_fusion

    rec = plan.recipe
    if rec is None:
        return ["Retrained models: skipped (--skip-retrain)."]
    s = rec["settings"]
    hp = ", ".join(f"{k} {s[k]:.4g}" if isinstance(s[k], float) else f"{k} {s[k]}"
                   for k in ("hidden", "dropout", "learning_rate", "weight_decay", "batch_size", "num_epochs",
                             "patience", "warmup_ratio", "scheduler"))
    notes = [f"Retrained: from scratch with the recipe of `{plan.recipe_from}`: fusion {s['feature_fusion']}, loss "
             f"{s['loss_type']} {json.dumps(rec['loss_kw'])}, sampler {s['sampler']}, {hp}; seeds "
             f"{', '.join(map(str, plan.seeds))} ({plan.seeds_from}); metrics at the epoch early stopping kept "
             f"(best validation weighted F1, as in every phase). Run folders in `{runs_dir}`."]
    if unimodal_fusion(s["feature_fusion"]) != s["feature_fusion"]:
        notes.append(f"Fusion {s['feature_fusion']} needs two modalities; the one-modality models use "
                     f"{unimodal_fusion(s['feature_fusion'])}.")
    return notes + rec["notes"]


def notes(plan: Plan, data, masking, runs_dir: Path) -> list[str]:
    """The notes under the table of ablation.md (and in ablation.json): what was masked, how it was retrained,
    and whether the full model reproduces its runs' recorded weighted F1."""
    out = _masking_notes(plan, data) + _retrain_notes(plan, runs_dir)
    full = masking[masking["condition"] == "full model"]
    if "recorded_weighted_f1" in full and full["recorded_weighted_f1"].notna().all():
        gap = float((full["recorded_weighted_f1"] - full["weighted_f1"]).abs().max())
        out.append(f"The full-model evaluation reproduces the weighted F1 in each run's metrics.json "
                   f"(largest difference {gap:.1e}).")
    return out


def header(plan: Plan, data) -> str:
    return (f"# Phase 5: modality ablation (split `{data.split.name}`, {len(data.val_idx)} validation posts, model "
            f"`{plan.model.checkpoint}`)")


def markdown(table, header: str, notes: list[str]) -> str:
    from msa.metrics import pm

    lines = [header, "", "Mean ± std over seeds on the validation split; Δ weighted F1 against the first row of its "
             "section (the full model for masking, the retrained text + image model for retraining).", "",
             "| ablation | model | inputs | fusion | n | " + " | ".join(n for _, n in METRICS) + " | Δ weighted F1 |",
             "|---|---|---|---|---:|" + "---:|" * (len(METRICS) + 1)]
    for _, r in table.iterrows():
        cells = [pm(r, k) for k, _ in METRICS]
        delta = "—" if r["delta_weighted_f1"] == 0 and r["is_reference"] else f"{r['delta_weighted_f1']:+.4f}"
        lines.append(f"| {r['section']} | {r['model']} | {r['inputs']} | {r['fusion']} | {r['n']} | "
                     + " | ".join(cells) + f" | {delta} |")
    lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def summary_json(plan: Plan, data, table, notes: list[str]) -> dict:
    """ablation.json, less its ``seconds``."""
    model, rec = plan.model, plan.recipe
    return {
        "checkpoint": str(model.checkpoint), "seed_checkpoints": [str(c) for c in model.checkpoints],
        "seed_runs_from": str(model.seed_source) if model.seed_source else None, "split": data.split.name,
        "split_sha256": data.split.sha256, "n_val": len(data.val_idx), "n_train": len(data.train_idx),
        "metrics": [k for k, _ in METRICS], "recipe": rec,
        "recipe_from": str(plan.recipe_from) if plan.recipe_from else None,
        "seeds": plan.seeds if rec else None, "seeds_from": plan.seeds_from if rec else None,
        "token_modalities": plan.tokens, "table": table.to_dict(orient="records"), "notes": notes}


# ----------------------------------------------------------------------------------------------- figures
def radar_styles(plan: Plan) -> tuple[dict, dict]:
    """The line style of each row of the radar chart, and its panels (row names per panel title)."""
    styles = {"full model": {"color": "black", "lw": 2.2},
              "retrained text + image": {"color": "black", "lw": 2.2}}
    colors = {"text": "#1f77b4", "image": "#d62728", "side": "#2ca02c"}
    if plan.side:
        styles["retrained text + image + side"] = {"color": "black", "lw": 2.2}
        styles["retrained text + image"] = {"color": "#7f7f7f", "lw": 1.8}
    for modality, how in plan.conditions[1:]:
        styles[condition_name(modality, how)] = {"color": colors[modality],
                                                 "ls": "--" if how == "zeros" else "-",
                                                 "marker": "x" if how == "zeros" else "o"}
    for kind, mods in RETRAINED[1:]:
        styles[retrained_name(kind)] = {"color": colors[mods[0]]}
    panels = {SECTION_TITLES["masking"]: [condition_name(m, h) for m, h in plan.conditions]}
    if plan.recipe is not None:
        panels[SECTION_TITLES["retrained"]] = [retrained_name(k) for k, _ in plan.retrain]
    return styles, panels


def figures(plan: Plan, table, n_val: int, figures_dir: Path) -> None:
    """ablation_radar.png and ablation_bars.png in ``figures_dir``."""
    from msa.plots import radar_chart

    styles, panels = radar_styles(plan)
    n_txt = f"{len(plan.model.checkpoints)} checkpoint(s)" + (f", retrained: {len(plan.seeds)} seed(s)"
                                                              if plan.recipe else "")
    drawn = [m for m in METRICS if m[0] != "weighted_recall"]  # weighted recall is the accuracy, always
    radar_chart(table.set_index("model"), drawn, figures_dir / "ablation_radar.png", panels=panels, styles=styles,
                title=f"Phase 5: modality ablation on the validation split ({n_val} posts)\nmasking: {n_txt}; "
                "weighted recall = accuracy, not drawn")
    bar_figure(table, drawn, figures_dir / "ablation_bars.png",
               title=f"Phase 5: modality ablation on the validation split ({n_val} posts; masking: {n_txt}; "
               "weighted recall = accuracy, not drawn)")


def _bar_positions(table):
    """The x position of each row's group of bars (the sections apart by a gap), its tick label, the sections."""
    import numpy as np

    sections = list(dict.fromkeys(table["section"]))
    xs, names, pos = [], [], 0.0
    for sec in sections:
        rows = table[table["section"] == sec]
        xs.append(pos + np.arange(len(rows)))
        names += [str(m).replace(" masked (", " masked\n(").replace("retrained ", "retrained\n")
                  for m in rows["model"]]
        pos += len(rows) + 0.6
    return xs, names, sections


def bar_figure(table, metrics, path: Path, title: str = "") -> Path:
    """One group of bars per row of ``table`` (mean, std error bars, the mean written above each bar), one bar
    per metric; the sections (masking, retrained) side by side with a gap and a heading each."""
    import numpy as np

    from msa.io import save_figure
    from msa.plots import pyplot

    plt = pyplot()
    xs, names, sections = _bar_positions(table)
    x = np.concatenate(xs)
    width = 0.84 / len(metrics)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.45 * len(x) + 1.5), 5.0))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, (key, label) in enumerate(metrics):
        off = x + (j - (len(metrics) - 1) / 2) * width
        mean, std = table[f"{key}_mean"].to_numpy(float), table[f"{key}_std"].to_numpy(float)
        ax.bar(off, mean, width, yerr=std, capsize=2, label=label, color=colors[j % len(colors)],
               error_kw={"lw": 0.9})
        for xi, m, sd in zip(off, mean, np.nan_to_num(std)):
            ax.annotate(f"{m:.3f}", (xi, m + sd), ha="center", va="bottom", fontsize=6.5, rotation=90,
                        textcoords="offset points", xytext=(0, 2))
    ax.set_xticks(x, names, fontsize=8.5)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("validation score (mean ± std)")
    ax.grid(axis="y", alpha=0.25, lw=0.5)
    ax.set_axisbelow(True)
    for k, sec in enumerate(sections):
        ax.text(xs[k].mean(), 1.02, SECTION_TITLES.get(sec, sec), ha="center", va="bottom", fontsize=9.5,
                transform=ax.get_xaxis_transform())
        if k:
            ax.axvline(xs[k][0] - 0.8, color="grey", lw=0.8, ls=":")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8.5)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out = save_figure(fig, path)
    plt.close(fig)
    return out
