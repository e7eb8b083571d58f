"""Phase 5: modality ablation: evaluates the best model on the validation split with its text or image features
replaced (by zeros, and by the training-split mean) and retrains text-only, image-only and text+image models with
its recipe, reading the checkpoint, its run folder's config.json, phase 0's split and the feature cache, and
writing tables to phase5/results/ and figures to phase5/figures/.

Run from the repository root after phase 0 and a training phase (phase 4, else 3, else 1):

    python phase5/run_phase5.py --data-root dataset/
    python phase5/run_phase5.py --data-root ../shared/mvsa --checkpoint phase3/results/runs/ce-none-s42/checkpoint \\
        --seeds 42,43,44 --jobs 2

(a) Masking. The trained model is evaluated with one modality's input features (pooled vector and, for a token
    modality, the token sequence) replaced by zeros, and by the mean of that modality's training-split features
    (for tokens: one mean token vector, mask True). Zeros are far outside what the model saw in training; the
    mean is an uninformative input from the training distribution, so the difference between the two rows is
    the part of the drop that comes from distribution shift rather than from the missing information.
    Mean and std over seeds: when <phase>/results/best.json (next to the checkpoint's run folder) lists
    "seed_runs" (run folders with checkpoint/), every one of them is evaluated; otherwise the one checkpoint
    (n = 1, std 0, said in the table).
(b) Retrained. Text-only, image-only and text+image models trained from scratch with the recipe of the
    checkpoint's run (config.json next to checkpoint/: "train", "fusion", "loss", "loss_kw",
    "arguments" -> "resolved"; hidden size and dropout from the checkpoint) and its phase's seeds, on the same
    split and cached features. For a fine-tuned model (its config names "init_from", as phase 4's do) that is
    the recipe of the run the fine-tuning started from, which trained the weights from scratch (--recipe-run
    picks another run folder). A fusion that needs two modalities (cross_attention) is replaced by concat for
    the one-modality models, and the table says so. --skip-retrain leaves (b) out.
A model with numeric side features (--side-features, msa.side) has them ablated as a third modality: masked by
    zeros and by their training-split mean in (a), and in (b) a text + image + side model (the recipe) next to the
    text + image model retrained without them.

Reads  the checkpoint (default: phase4/results/best/checkpoint, else phase3's, else phase1's, else the newest
       phase*/results/*/checkpoint), its run folder's config.json (and that of the run it was fine-tuned
       from) and <phase>/results/best.json,
       <work-dir>/train_cleaned.txt and splits/<split>.csv (phase 0), the feature cache
Writes phase5/results/ablation.csv, ablation.md, ablation.json (one row per ablation: mean and std over seeds
       of accuracy, weighted precision, weighted recall, weighted F1, macro F1, neutral F1);
       masking_runs.csv (one row per checkpoint x condition), masking_predictions.csv (guid, label, pred,
       probabilities per checkpoint x condition); retrained_runs.csv and runs/<text|image|multimodal>-s<seed>/
       run folders; phase5/figures/ablation_radar.png, ablation_bars.png
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from msa import cli, stamp

log = logging.getLogger("phase5")
PHASE_DIR = Path(__file__).resolve().parent
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


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0] + "\n\n" + "\n\n".join(__doc__.split("\n\n")[1:]))
    cli.add_data_args(p)
    from msa.settings import add_resume_arg

    g = p.add_argument_group("phase 5 ablation")
    g.add_argument("--checkpoint", type=Path, default=None,
                   help="checkpoint folder (or its run folder) of the model to ablate (default: the first of "
                        "phase4/, phase3/, phase1/results/best/checkpoint that exists, else the newest run's); its "
                        "run folder's config.json gives the recipe of (b), <phase>/results/best.json the seed runs "
                        "of (a)")
    g.add_argument("--seeds", default=None,
                   help="comma-separated seeds of the retrained models (default: the seeds of the model's phase: "
                        f"best.json's seed runs, else the run's --seeds, else {DEFAULT_SEEDS})")
    add_resume_arg(g)
    g.add_argument("--recipe-run", type=Path, default=None,
                   help="run folder whose config.json is the recipe of the retrained models (default: the "
                        "checkpoint's run folder; for a fine-tuned model, the run its fine-tuning started from)")
    g.add_argument("--skip-retrain", action="store_true",
                   help="only the masking ablation (a); no retrained models")
    o = p.add_argument_group("execution and output")
    o.add_argument("--jobs", type=cli.positive_int, default=2,
                   help="training processes in parallel (one torch thread each); 1 = in this process")
    o.add_argument("--cache-dir", type=Path, default=cli.CACHE_ROOT / "features", help="feature cache folder")
    o.add_argument("--feature-batch-size", type=cli.positive_int, default=32, help="batch size of the frozen backbones")
    o.add_argument("--results-dir", type=Path, default=PHASE_DIR / "results", help="where tables and runs go")
    o.add_argument("--figures-dir", type=Path, default=PHASE_DIR / "figures", help="where the figures go")
    stamp.add_force_arg(o)
    o.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def condition_name(modality: str | None, how: str | None) -> str:
    from msa.ablation import SUBSTITUTES

    return "full model" if modality is None else f"{modality} masked ({SUBSTITUTES[how]})"


def retrained_name(kind: str) -> str:
    return {"multimodal": "retrained text + image", "text": "retrained text only",
            "image": "retrained image only", "multimodal_side": "retrained text + image + side"}[kind]


# ----------------------------------------------------------------------------------------------- inputs
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


def default_seeds(args, seed_source, run_configs: list[dict | None], rec: dict | None) -> tuple[list[int], str]:
    from msa.settings import parse_seeds

    if args.seeds:
        return parse_seeds(args.seeds), "--seeds"
    if seed_source is not None and len(run_configs) > 1 and all(rc and "seed" in rc for rc in run_configs):
        return [int(rc["seed"]) for rc in run_configs], f"the seed runs of {seed_source}"
    if rec and rec["seeds"]:
        return list(rec["seeds"]), "the --seeds of the model's run"
    return parse_seeds(DEFAULT_SEEDS), "the default (the model's run records no seeds)"


# ----------------------------------------------------------------------------------------------- tables
def summary_row(section: str, model: str, inputs: str, fusion: str, runs: list[dict], note: str = "") -> dict:
    from msa.metrics import summarise_runs

    s = summarise_runs(runs)
    row = {"section": section, "model": model, "inputs": inputs, "fusion": fusion, "n": len(runs)}
    for key, _ in METRICS:
        row[f"{key}_mean"] = s[key]["mean"]
        row[f"{key}_std"] = s[key]["std"]
    row["note"] = note
    return row


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


# ----------------------------------------------------------------------------------------------- figures
def bar_figure(table, metrics, path: Path, title: str = "") -> Path:
    """One group of bars per row of ``table`` (mean, std error bars, the mean written above each bar), one bar
    per metric; the sections (masking, retrained) side by side with a gap and a heading each."""
    import numpy as np

    from msa.io import save_figure
    from msa.plots import pyplot

    plt = pyplot()
    sections = list(dict.fromkeys(table["section"]))
    xs, names, pos = [], [], 0.0
    for sec in sections:
        rows = table[table["section"] == sec]
        xs.append(pos + np.arange(len(rows)))
        names += [str(m).replace(" masked (", " masked\n(").replace("retrained ", "retrained\n")
                  for m in rows["model"]]
        pos += len(rows) + 0.6
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
        ax.text(xs[k].mean(), 1.02, {"masking": "(a) masking: the trained model, one modality replaced",
                                     "retrained": "(b) retrained from scratch with the same recipe"}.get(sec, sec),
                ha="center", va="bottom", fontsize=9.5, transform=ax.get_xaxis_transform())
        if k:
            ax.axvline(xs[k][0] - 0.8, color="grey", lw=0.8, ls=":")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8.5)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out = save_figure(fig, path)
    plt.close(fig)
    return out


# ----------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    import pandas as pd

    from msa import side as side_mod
    from msa.ablation import (
        SUBSTITUTES,
        only,
        recipe,
        recipe_config,
        run_config,
        seed_checkpoints,
        substitute,
        unimodal_fusion,
    )
    from msa.checkpoint import load_checkpoint, read_checkpoint_config
    from msa.data import LABELS
    from msa.experiment import RunSpec, labelled_features, load_labelled, run_grid, token_modalities
    from msa.io import write_csv, write_json, write_text
    from msa.metrics import classification_metrics
    from msa.plots import radar_chart
    from msa.predict import backbones_for, default_checkpoint
    from msa.trainer import predict_rows

    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)
    t0 = time.time()
    if args.seeds is not None:
        from msa.settings import parse_seeds

        parse_seeds(args.seeds)  # a bad --seeds is an error before anything runs
    data = load_labelled(cli.work_dir(args), args.split)
    checkpoint = Path(args.checkpoint) if args.checkpoint is not None else default_checkpoint()
    if not (checkpoint / "model.safetensors").is_file() and (checkpoint / "checkpoint" / "model.safetensors").is_file():
        checkpoint = checkpoint / "checkpoint"  # a run folder was given
    primary_cfg = read_checkpoint_config(checkpoint)  # a missing or incomplete folder: one clear error
    ckpts, seed_source = seed_checkpoints(checkpoint)
    configs = [read_checkpoint_config(c) for c in ckpts]
    stamp_path = args.results_dir / "inputs.json"
    stamp_inputs = stamp.inputs_of(args, files=stamp.phase0_files(cli.work_dir(args), args.split)
                             + [c / "model.safetensors" for c in ckpts] + [c.parent / "config.json" for c in ckpts]
                             + ([Path(seed_source)] if seed_source else []), code=[Path(__file__)])
    if stamp.check(stamp_path, stamp_inputs, args.force, "phase 5"):
        print(f"phase 5: up to date ({args.results_dir}); --force recomputes")
        return 0
    run_configs = [check_checkpoint(c, cfg, data) for c, cfg in zip(ckpts, configs)]
    primary_rc = check_checkpoint(checkpoint, primary_cfg, data)
    for c, cfg in zip(ckpts, configs):
        if cfg.get("backbones") != primary_cfg.get("backbones"):
            raise cli.UserError(f"seed checkpoint {c} was trained on other backbones than {checkpoint}")
    if seed_source is not None and len(ckpts) > 1:
        log.info("masking: %d seed checkpoints listed in %s", len(ckpts), seed_source)
    else:
        log.info("masking: one checkpoint %s (%s)", ckpts[0],
                 f"{seed_source} has no 'seed_runs'" if seed_source else "no best.json describes it")

    rec = rc_path = None
    chain_notes: list[str] = []
    if not args.skip_retrain:
        if args.recipe_run is not None:
            rc, rc_path = run_config(Path(args.recipe_run) / "checkpoint")
        else:
            rc, rc_path, chain_notes = recipe_config(checkpoint if primary_rc else next(
                (c for c, r in zip(ckpts, run_configs) if r), checkpoint))
        if rc is None:
            raise cli.UserError(f"{rc_path} not found: the recipe of {checkpoint} is unknown, so the retrained "
                                "models of (b) cannot be trained; pass --recipe-run DIR, or --skip-retrain for the "
                                "masking ablation only")
        rec = recipe(rc, primary_cfg)
        rec["notes"] = chain_notes + rec["notes"]
    seeds, seeds_from = default_seeds(args, seed_source, run_configs, rec)

    # features of every labelled post with the checkpoint's backbones (and the tokens its fusions need)
    tokens = sorted({m for cfg in configs for m in cfg.get("token_modalities", [])}
                    | set(token_modalities(rec["settings"]["feature_fusion"]) if rec else []))
    tb, ib = backbones_for(primary_cfg)
    fs = labelled_features(Path(args.data_root) / "data", data.guids, tb, ib, args.cache_dir, tokens,
                           args.feature_batch_size)
    side_rec = primary_cfg.get("side_features")
    for c, cfg in zip(ckpts, configs):
        if cfg.get("side_features") != side_rec:
            raise cli.UserError(f"seed checkpoint {c} was trained with other side features than {checkpoint}")
    fs = side_mod.attach(fs, side_mod.for_checkpoint(primary_cfg, data.guids, Path(args.data_root) / "data",
                                                     args.cache_dir))
    all_mods = (*MODALITIES, "side") if side_rec else MODALITIES
    conditions = CONDITIONS + (SIDE_CONDITIONS if side_rec else ())
    retrain = (SIDE_RETRAINED + RETRAINED) if side_rec else RETRAINED
    val = data.val_idx
    y_val = data.labels[val]
    val_guids = [data.guids[i] for i in val]

    # (a) masking
    mask_rows, pred_frames = [], []
    for ck, cfg, rc in zip(ckpts, configs, run_configs):
        model, _ = load_checkpoint(ck)
        ck_tokens = cfg.get("token_modalities", model.token_modalities)
        recorded = None
        metrics_file = ck.parent / "metrics.json"
        if metrics_file.is_file():
            recorded = json.loads(metrics_file.read_text(encoding="utf-8")).get("weighted_f1")
        for modality, how in conditions:
            feats = fs if modality is None else substitute(fs, modality, how, data.train_idx)
            proba = predict_rows(model, feats, val, ck_tokens)
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
            mask_rows.append(row)
            frame = pd.DataFrame({"checkpoint": str(ck), "seed": row["seed"], "condition": row["condition"],
                                  "guid": val_guids, "label": [LABELS[k] for k in y_val],
                                  "pred": [LABELS[k] for k in pred]})
            for k, lab in enumerate(LABELS):
                frame[f"p_{lab}"] = proba[:, k].round(6)
            pred_frames.append(frame)
    masking = pd.DataFrame(mask_rows)
    write_csv(args.results_dir / "masking_runs.csv", masking)
    write_csv(args.results_dir / "masking_predictions.csv", pd.concat(pred_frames, ignore_index=True))

    model_fusion = primary_cfg["model"]["fusion"]
    n_note = (f"{len(ckpts)} seed checkpoints from {seed_source}" if seed_source is not None and len(ckpts) > 1
              else "single checkpoint: n = 1, std 0")
    rows = []
    for modality, how in conditions:
        name = condition_name(modality, how)
        runs = masking[masking["condition"] == name].to_dict(orient="records")
        inputs = " + ".join(all_mods) if modality is None else \
            " + ".join([m for m in all_mods if m != modality] + [f"{SUBSTITUTES[how]} {modality}"])
        rows.append(summary_row("masking", name, inputs, model_fusion, runs, n_note))

    # (b) retrained from scratch with the model's recipe
    retrained = None
    if rec is not None:
        s = rec["settings"]
        uni = unimodal_fusion(s["feature_fusion"])
        mixed = rec["mixed_precision"]
        if mixed != "no":
            import torch

            if not torch.cuda.is_available():
                log.warning("the recipe used mixed precision %s; no GPU here, so the retrained runs use full "
                            "precision", mixed)
                mixed = "no"
        base_record = cli.args_record(args)
        base_record["seeds"] = ",".join(map(str, seeds))
        results = []
        for kind, mods in retrain:
            fusion = s["feature_fusion"] if len([m for m in mods if m != "side"]) > 1 else uni
            settings = {**s, "feature_fusion": fusion, "side_features": s.get("side_features", "") if "side" in mods
                        else ""}
            record = {**base_record, "resolved": settings,
                      "ablation": {"model": retrained_name(kind), "modalities": list(mods),
                                   "recipe_from": str(rc_path), "checkpoint": str(checkpoint)}}
            specs = [RunSpec(args.results_dir / "runs" / f"{kind}-s{seed}", settings, seed, loss_kw=rec["loss_kw"],
                             light=False, tag=kind, mixed_precision=mixed, resume=args.resume) for seed in seeds]
            out = run_grid(specs, only(fs, mods), data, jobs=args.jobs, record=record,
                           desc=f"phase 5 {retrained_name(kind)} x seed")
            results += [{"model": retrained_name(kind), "modalities": "+".join(mods), "fusion": fusion, **r}
                        for r in out]
            note = f"seeds {', '.join(map(str, seeds))}"
            if fusion != s["feature_fusion"]:
                note += f"; {s['feature_fusion']} needs two modalities, so {fusion}"
            rows.append(summary_row("retrained", retrained_name(kind), " + ".join(mods), fusion,
                                    [r for r in out], note))
        retrained = pd.DataFrame(results).drop(columns=["confusion_matrix", "labels", "tag"], errors="ignore")
        write_csv(args.results_dir / "retrained_runs.csv", retrained)

    table = pd.DataFrame(rows)
    table["is_reference"] = ~table.duplicated("section")
    ref = table.groupby("section", sort=False)["weighted_f1_mean"].transform("first")
    table["delta_weighted_f1"] = table["weighted_f1_mean"] - ref
    write_csv(args.results_dir / "ablation.csv", table)

    # notes and Markdown
    notes = []
    if seed_source is not None and len(ckpts) > 1:
        notes.append(f"Masking: the model `{checkpoint}`, evaluated for each of the {len(ckpts)} seed runs listed "
                     f"in `{seed_source}` (\"seed_runs\").")
    else:
        why = f"`{seed_source}` has no \"seed_runs\"" if seed_source else "no best.json lists seed runs for it"
        notes.append(f"Masking: the single checkpoint `{checkpoint}` (n = 1, so std is 0: {why}).")
    tok_note = f"; token sequences of {', '.join(tokens)} become one such token (mask True)" if tokens else ""
    notes.append(f"Substitutes replace the modality's input features for every validation post: zeros, or the mean "
                 f"of its {len(data.train_idx)} training-split feature vectors{tok_note}. Both carry no information "
                 "about the post; zeros lie far from anything seen in training, the mean lies in the middle of the "
                 "training inputs, so the gap between the two rows of a modality is the part of its drop that "
                 "depends on the substitute's distribution shift rather than on the missing information.")
    if rec is not None:
        s = rec["settings"]
        hp = ", ".join(f"{k} {s[k]:.4g}" if isinstance(s[k], float) else f"{k} {s[k]}"
                       for k in ("hidden", "dropout", "learning_rate", "weight_decay", "batch_size", "num_epochs",
                                 "patience", "warmup_ratio", "scheduler"))
        notes.append(f"Retrained: from scratch with the recipe of `{rc_path}`: fusion {s['feature_fusion']}, loss "
                     f"{s['loss_type']} {json.dumps(rec['loss_kw'])}, sampler {s['sampler']}, {hp}; seeds "
                     f"{', '.join(map(str, seeds))} ({seeds_from}); metrics at the epoch early stopping kept "
                     f"(best validation weighted F1, as in every phase). Run folders in `{args.results_dir / 'runs'}`.")
        if unimodal_fusion(s["feature_fusion"]) != s["feature_fusion"]:
            notes.append(f"Fusion {s['feature_fusion']} needs two modalities; the one-modality models use "
                         f"{unimodal_fusion(s['feature_fusion'])}.")
        notes += rec["notes"]
    else:
        notes.append("Retrained models: skipped (--skip-retrain).")
    full = masking[masking["condition"] == "full model"]
    if "recorded_weighted_f1" in full and full["recorded_weighted_f1"].notna().all():
        gap = float((full["recorded_weighted_f1"] - full["weighted_f1"]).abs().max())
        notes.append(f"The full-model evaluation reproduces the weighted F1 in each run's metrics.json "
                     f"(largest difference {gap:.1e}).")
    header = (f"# Phase 5: modality ablation (split `{data.split.name}`, {len(val)} validation posts, model "
              f"`{checkpoint}`)")
    md = markdown(table, header, notes)
    write_text(args.results_dir / "ablation.md", md)
    write_json(args.results_dir / "ablation.json", {
        "checkpoint": str(checkpoint), "seed_checkpoints": [str(c) for c in ckpts],
        "seed_runs_from": str(seed_source) if seed_source else None, "split": data.split.name,
        "split_sha256": data.split.sha256, "n_val": len(val), "n_train": len(data.train_idx),
        "metrics": [k for k, _ in METRICS], "recipe": rec, "recipe_from": str(rc_path) if rc_path else None,
        "seeds": seeds if rec else None, "seeds_from": seeds_from if rec else None, "token_modalities": tokens,
        "table": table.to_dict(orient="records"), "notes": notes, "seconds": round(time.time() - t0, 1)})

    # figures
    plot = table.set_index("model")
    styles = {"full model": {"color": "black", "lw": 2.2},
              "retrained text + image": {"color": "black", "lw": 2.2}}
    colors = {"text": "#1f77b4", "image": "#d62728", "side": "#2ca02c"}
    if side_rec:
        styles["retrained text + image + side"] = {"color": "black", "lw": 2.2}
        styles["retrained text + image"] = {"color": "#7f7f7f", "lw": 1.8}
    for modality, how in conditions[1:]:
        styles[condition_name(modality, how)] = {"color": colors[modality],
                                                 "ls": "--" if how == "zeros" else "-",
                                                 "marker": "x" if how == "zeros" else "o"}
    for kind, mods in RETRAINED[1:]:
        styles[retrained_name(kind)] = {"color": colors[mods[0]]}
    panels = {"(a) masking: the trained model, one modality replaced":
              [condition_name(m, h) for m, h in conditions]}
    if rec is not None:
        panels["(b) retrained from scratch with the same recipe"] = [retrained_name(k) for k, _ in retrain]
    n_txt = f"{len(ckpts)} checkpoint(s)" + (f", retrained: {len(seeds)} seed(s)" if rec else "")
    drawn = [m for m in METRICS if m[0] != "weighted_recall"]  # weighted recall is the accuracy, always
    radar_chart(plot, drawn, args.figures_dir / "ablation_radar.png", panels=panels, styles=styles,
                title=f"Phase 5: modality ablation on the validation split ({len(val)} posts)\nmasking: {n_txt}; "
                "weighted recall = accuracy, not drawn")
    bar_figure(table, drawn, args.figures_dir / "ablation_bars.png",
               title=f"Phase 5: modality ablation on the validation split ({len(val)} posts; masking: {n_txt}; "
               "weighted recall = accuracy, not drawn)")

    stamp.write(stamp_path, stamp_inputs, [args.results_dir / "ablation.csv", args.results_dir / "ablation.md"])
    print(md)
    print(f"tables -> {args.results_dir}, figures -> {args.figures_dir} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
