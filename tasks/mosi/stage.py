"""The work of tasks/mosi/run_mosi.py: its flags (settings dataclasses, see :mod:`msa.config`) and their checks,
the --make-synthetic and --convert utilities, load the feature file, train every model x seed, summarise over
seeds, write the tables, predictions, figure and records. The script is the front end (parser, the stamp)."""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from msa import cli
from msa.config import add_options, option
from msa.settings import DEVICES

log = logging.getLogger("mosi")
TASK_DIR = Path(__file__).resolve().parent
DATASETS = ("mosi", "mosei", "sims")
#: the default --model: the best simple model on our measurements (see docs/mosi.md)
DEFAULT_MODEL = "transformer"
#: the widest --hidden accepted (the weights grow with its square; wider is a typo, not a model)
MAX_HIDDEN = 4096
#: the largest seed torch, numpy and random all accept alike
MAX_SEED = 2**32 - 1
#: the largest --make-synthetic file (about 160 KB a sample: 50 x 768 text frames; CMU-MOSEI has 23k samples)
MAX_SYNTHETIC = 50_000


# ------------------------------------------------------------------------------------------------ flags
def _seq(name: str):
    """A registry of :mod:`msa.seq_models`, read when the parser is built."""
    def names():
        from msa import seq_models

        return list(getattr(seq_models, name))

    return names


def _model_help() -> str:
    from msa.seq_models import ENCODERS, MODELS

    return (f"comma-separated models, each NAME or NAME+FUSION; NAME from {', '.join(MODELS)} (mean/lstm/transformer "
            f"= that encoder per modality: {', '.join(ENCODERS)}); the first one's results fill OUT/metrics.json and "
            "OUT/test_predictions.csv")


@dataclass(frozen=True)
class DataSettings:
    data: Path | None = option(None, "MMSA feature file: the toolkit's pickle (e.g. MOSI/Processed/unaligned_50.pkl), "
                               "or the X.safetensors (+ X.json) copy written by --convert (never modified)")
    dataset: str = option("mosi", "which metric set: mosi / mosei (labels in [-3, 3]) or sims (CH-SIMS, labels in "
                          "[-1, 1])", choices=DATASETS)
    modalities: str = option("text,audio,vision", "comma-separated modalities to use, from text, audio, vision "
                             "(cmcbep needs two or more)")
    convert: bool = option(False, "write a safetensors + JSON copy of the --data pickle (next to it, or "
                           "--convert-out) and exit; later runs load it with --data X.safetensors without unpickling")
    convert_out: Path | None = option(None, "path stem of the converted copy (default: the pickle's path without "
                                      ".pkl)", type=cli.output_file)
    make_synthetic: Path | None = option(None, "write a synthetic MMSA-layout pickle (planted learnable signal, -inf "
                                         "audio entries, variable lengths; text 50x768, audio 50x5, vision 50x20 like "
                                         "MOSI) to FILE and exit", type=cli.output_file, metavar="FILE")
    synthetic_samples: int = option(700, f"samples in the --make-synthetic file (10 to {MAX_SYNTHETIC})",
                                    type=cli.positive_int)
    synthetic_seed: int = option(0, "random seed of the --make-synthetic file", type=cli.non_negative_int)


@dataclass(frozen=True)
class ModelSettings:
    model: str = option(DEFAULT_MODEL, _model_help)
    fusion: str = option("concat", "fusion of the encoded modalities (msa.fusions) for models given without +FUSION",
                         choices=_seq("POOLED_FUSIONS"))
    hidden: int = option(64, f"width of the encoders, projections and heads (at most {MAX_HIDDEN})",
                         type=cli.positive_int)
    dropout: float = option(0.1, "dropout in encoders, projections and heads (0 <= p < 1)", type=cli.fraction)
    max_frames: int = option(100, "a modality whose sequences are longer (the unaligned files' audio and vision: "
                             "375-500 frames) has its frames averaged in windows of ceil(L / max-frames), so at most "
                             "this many remain; attention cost grows with the square of the length (0 = keep every "
                             "frame)", type=cli.non_negative_int)


@dataclass(frozen=True)
class CMCBEPSettings:
    cmcbep_encoder: str = option("transformer", "sequence encoder of cmcbep (its cross-attention needs the frame "
                                 "sequences)", choices=_seq("ENCODERS"))
    lead: str = option("auto", "lead modality that supplements the others through cross-attention: text, audio, "
                       "vision, or auto (a learned per-sample softmax over the modalities)")
    cl_weight: float = option(0.1, "weight of the cross-modal InfoNCE loss (0 = off)", type=cli.non_negative_float)
    cl_temperature: float = option(0.1, "InfoNCE temperature (> 0)", type=cli.positive_float)
    aux_weight: float = option(0.5, "weight of the losses of the unimodal and fused predictions that the balanced "
                               "prediction combines (0 = only the combined prediction is trained)",
                               type=cli.non_negative_float)
    unimodal_labels: bool = option(False, "train cmcbep's unimodal predictions on regression_labels_T/A/V where the "
                                   "file has them (CH-SIMS), else on the multimodal label")


@dataclass(frozen=True)
class TrainingSettings:
    loss: str = option("l1", "regression loss (L1 = MAE, what most of MMSA's regression trainers use)",
                       choices=_seq("LOSSES"))
    epochs: int = option(30, "maximum epochs per run", type=cli.positive_int)
    patience: int = option(8, "stop after this many epochs without a lower validation loss (0 = never)",
                           type=cli.non_negative_int)
    batch_size: int = option(32, "samples per step", type=cli.positive_int)
    learning_rate: float = option(1e-3, "AdamW learning rate (warm-up + cosine)", type=cli.positive_float)
    weight_decay: float = option(0.01, "AdamW weight decay", type=cli.non_negative_float)
    warmup_ratio: float = option(0.1, "share of steps with linear warm-up", type=cli.fraction)
    seeds: str = option("42,43,44", "comma-separated seeds (integers 0 .. 2^32-1); every model is trained once per "
                        "seed")
    device: str = option("auto", "where to train (auto: cuda when available)", choices=DEVICES)
    threads: int = option(1, "torch CPU threads (the models are small: one thread is fastest on a shared or small "
                          "CPU; 0 = torch's default)", type=cli.non_negative_int)


@dataclass(frozen=True)
class OutputSettings:
    out: Path | None = option(None, "output folder (default tasks/mosi/results/<dataset>)", type=cli.output_dir)


def add_args(p: argparse.ArgumentParser) -> None:
    """Every flag of run_mosi.py, in its --help groups."""
    from msa import stamp

    for cls, title in ((DataSettings, "data"), (ModelSettings, "model"), (CMCBEPSettings, "cmcbep"),
                       (TrainingSettings, "training"), (OutputSettings, "output")):
        groups = add_options(p, cls, group=title)
    stamp.add_force_arg(groups["output"])
    groups["output"].add_argument("-v", "--verbose", action="store_true", help="debug logging")


def check_args(args) -> tuple[list[str], list[str], list[int]]:
    """The flags' checks beyond their types: ``(modalities, model specs, seeds)``."""
    from msa.fusions import ConfigError
    from msa.mmsa import MODALITIES
    from msa.seq_models import parse_model_spec
    from msa.settings import parse_seeds

    mods = [s.strip() for s in args.modalities.split(",") if s.strip()]
    bad = [s for s in mods if s not in MODALITIES]
    if bad or not mods or len(set(mods)) != len(mods):
        raise cli.UserError(f"--modalities must be distinct names from {', '.join(MODALITIES)}, "
                            f"got {args.modalities!r}")
    specs = [s.strip() for s in args.model.split(",") if s.strip()]
    if not specs:
        raise cli.UserError("--model is empty")
    if len(set(specs)) != len(specs):
        raise cli.UserError(f"--model lists a model twice: {args.model!r}")
    for s in specs:
        parse_model_spec(s)  # ConfigError (a UserError) for unknown names
        if s.startswith("cmcbep") and len(mods) < 2:
            raise ConfigError(f"cmcbep needs at least two modalities, got --modalities {args.modalities}")
    if args.lead != "auto" and args.lead not in mods:
        raise cli.UserError(f"--lead must be auto or one of the modalities {', '.join(mods)}, got {args.lead!r}")
    if args.hidden > MAX_HIDDEN:
        raise cli.UserError(f"--hidden {args.hidden} is wider than {MAX_HIDDEN}")
    if not args.dropout < 1:
        raise cli.UserError(f"--dropout must be in [0, 1), got {args.dropout}")
    seeds = parse_seeds(args.seeds)
    bad = [s for s in seeds if not 0 <= s <= MAX_SEED]
    if bad:
        raise cli.UserError(f"--seeds must be integers from 0 to {MAX_SEED}, got {bad[0]}")
    return mods, specs, seeds


def utility(args) -> str | None:
    """--make-synthetic or --convert, when given: does it and returns the line to print; else ``None`` (after
    checking that --data is there)."""
    from msa import mmsa

    if args.make_synthetic is not None:
        if not 10 <= args.synthetic_samples <= MAX_SYNTHETIC:
            raise cli.UserError(f"--synthetic-samples must be 10 to {MAX_SYNTHETIC}, got {args.synthetic_samples}")
        path = mmsa.write_synthetic(args.make_synthetic, n=args.synthetic_samples, seed=args.synthetic_seed,
                                    dataset="sims" if args.dataset == "sims" else "mosi")
        return f"synthetic MMSA file ({args.synthetic_samples} samples) -> {path}"
    if args.data is None:
        raise cli.UserError("--data FILE is required (an MMSA feature file, or its --convert copy)")
    if args.convert:
        st, js = mmsa.convert(args.data, args.convert_out)
        return f"converted {args.data} -> {st} + {js}; later runs: --data {st}"
    return None


def data_files(args) -> list[Path]:
    """The files the stamp hashes: --data and, for a converted copy, its JSON."""
    from msa import mmsa

    return [args.data] + ([mmsa.converted_paths(args.data)[1]] if mmsa.is_converted(args.data) else [])


# ------------------------------------------------------------------------------------------------ the run


def _check_labels(data, dataset: str) -> None:
    y = np.concatenate([sp.labels for sp in data.splits.values()])
    if dataset == "sims" and np.abs(y).max() > 1.0 + 1e-6:
        log.warning("labels reach %.2f but CH-SIMS labels are in [-1, 1]: is this a MOSI/MOSEI file? (the sims "
                    "metrics clip to [-1, 1]; pass --dataset mosi or mosei)", float(np.abs(y).max()))
    elif dataset != "sims" and np.abs(y).max() <= 1.0 and np.ptp(y) > 0:
        log.warning("every label is in [-1, 1], as in CH-SIMS, not [-3, 3] as in MOSI/MOSEI: pass --dataset sims if "
                    "this is CH-SIMS")


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise cli.UserError("--device cuda: no CUDA device is available")
    return name


def setup_torch(threads: int, device: str) -> str:
    """Set torch's CPU threads (0 = its default) and resolve ``device``."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    return _device(device)


def load(args, mods: list[str]):
    """The feature file's data, the training feature statistics and the per-split tensors."""
    from msa import mmsa
    from msa.seq_models import SeqTensors, feature_stats

    t0 = time.time()
    data = mmsa.load_mmsa(args.data, mods)
    _check_labels(data, args.dataset)
    if args.unimodal_labels and not data.splits["train"].unimodal_labels:
        log.warning("--unimodal-labels: the file has no regression_labels_T/A/V; the multimodal label is used")
    log.info("loaded %s in %.1f s: %s", args.data, time.time() - t0, data.summary()["n"])
    stats = feature_stats(data.splits["train"], mods)
    tensors = {s: SeqTensors(data.splits[s], mods) for s in mmsa.SPLITS}
    return data, stats, tensors


def run_grid(specs: list[str], seeds: list[int], data, tensors: dict, stats: dict, args, mods: list[str],
             device: str, out: Path) -> list[dict]:
    """Train every model with every seed (run folders under ``out/runs``), printing one line per run."""
    from msa.metrics import MMSA_METRICS

    names = MMSA_METRICS[args.dataset]
    runs = []
    for spec in specs:
        for seed in seeds:
            r = train_one(spec, seed, data, tensors, stats, args, mods, device, out / "runs" / f"{spec}-s{seed}")
            t = r["test"]
            print(f"{spec} seed {seed}: test MAE {t['MAE']:.4f}  Corr {t['Corr']:.4f}  "
                  + "  ".join(f"{k} {t[k]:.4f}" for k in names if k not in ("MAE", "Corr"))
                  + f"  (best epoch {r['best_epoch']}/{r['epochs_run']}, {r['seconds']:.1f} s)", flush=True)
            runs.append(r)
    return runs


def train_one(spec: str, seed: int, data, tensors: dict, stats: dict, args, mods: list[str], device: str,
              run_dir: Path) -> dict:
    """Train ``spec`` with ``seed``, write its run folder, return its metrics and predictions."""
    from msa.checkpoint import save_checkpoint
    from msa.io import write_csv, write_json
    from msa.metrics import mmsa_metrics
    from msa.seq_models import RegressionConfig, build_model, fit_regression, predict
    from msa.trainer import seed_everything

    seed_everything(seed)  # the model's initial weights depend on the seed
    from msa.seq_models import frame_pool

    dims = {m: data.dims[m] for m in mods}
    pool = frame_pool({m: data.seq_lens[m] for m in mods}, args.max_frames)
    model = build_model(spec, dims, fusion=args.fusion, hidden=args.hidden, dropout=args.dropout, pool=pool,
                        cmcbep_encoder=args.cmcbep_encoder, lead=args.lead, temperature=args.cl_temperature,
                        cl_weight=args.cl_weight, aux_weight=args.aux_weight)
    model.set_normalization(stats)
    cfg = RegressionConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                           weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio, patience=args.patience,
                           seed=seed, loss=args.loss, unimodal_labels=args.unimodal_labels, device=device)
    res = fit_regression(model, tensors["train"], tensors["valid"], cfg)
    out = {"model": spec, "seed": seed, "best_epoch": res["best_epoch"], "epochs_run": len(res["history"]),
           "seconds": round(res["seconds"], 2)}
    preds = {}
    for split in ("valid", "test"):  # test: once, with the weights chosen on valid
        extra = predict(model, tensors[split], device, extras=True)
        preds[split] = extra["pred"].astype(np.float64)
        out[split] = mmsa_metrics(data.splits[split].labels, extra["pred"], args.dataset)  # float32, as in MMSA
        sp = data.splits[split]
        write_csv(run_dir / f"{split}_predictions.csv",
                  pd.DataFrame({"id": sp.ids, "label": sp.labels.astype(np.float64), "pred": preds[split]}))
        if split == "test" and "lead_weights" in extra:  # cmcbep: which modality leads, on test
            lw = extra["lead_weights"]
            share = np.bincount(lw.argmax(1), minlength=len(mods)) / max(len(lw), 1)
            out["test_lead_weight_mean"] = dict(zip(mods, lw.mean(0).round(4).tolist()))
            out["test_lead_share"] = dict(zip(mods, share.round(4).tolist()))
    if hasattr(model, "balance"):  # cmcbep: learned weights of [fused, unimodal...] in the balanced prediction
        import torch

        w = torch.softmax(model.balance.detach().cpu(), 0).numpy().round(4).tolist()
        out["balance_weights"] = dict(zip(["fused", *mods], w))
    config = {"model": model.config(), "dataset": args.dataset, "modalities": mods, "train": cfg.as_dict(),
              "data": str(args.data)}
    save_checkpoint(run_dir / "checkpoint", model, config)
    write_json(run_dir / "config.json", config)
    write_csv(run_dir / "history.csv", pd.DataFrame(res["history"]))
    write_json(run_dir / "metrics.json", out)
    out["pred_test"] = preds["test"]
    return out


def _fmt(mean: float, std: float) -> str:
    return "nan" if not np.isfinite(mean) else f"{mean:.4f} ± {std:.4f}"


def summarise(runs: list[dict], specs: list[str], metric_names) -> dict:
    """``{spec: {"valid"/"test": {metric: {mean, std, per_seed}}, "seconds": {mean, std}, "seeds": [...]}}``."""
    from msa.metrics import mean_std

    out = {}
    for spec in specs:
        rs = [r for r in runs if r["model"] == spec]
        entry = {"seeds": [r["seed"] for r in rs]}
        for split in ("valid", "test"):
            entry[split] = {}
            for k in metric_names:
                v = np.array([r[split][k] for r in rs], dtype=float)
                mean, std = mean_std(v)
                entry[split][k] = {"mean": mean, "std": std, "per_seed": v.tolist()}
        mean, std = mean_std([r["seconds"] for r in rs])
        entry["seconds"] = {"mean": mean, "std": std}
        entry["best_epoch"] = [r["best_epoch"] for r in rs]
        out[spec] = entry
    return out


def table_frame(summary: dict, metric_names, split: str = "test") -> pd.DataFrame:
    rows = []
    for spec, e in summary.items():
        row = {"model": spec, "n_seeds": len(e["seeds"])}
        for k in metric_names:
            row[f"{k}_mean"], row[f"{k}_std"] = e[split][k]["mean"], e[split][k]["std"]
        row["seconds_per_run_mean"], row["seconds_per_run_std"] = e["seconds"]["mean"], e["seconds"]["std"]
        rows.append(row)
    return pd.DataFrame(rows)


def table_markdown(summary: dict, metric_names, args, data) -> str:
    seeds = next(iter(summary.values()))["seeds"]
    n = {s: sp.n for s, sp in data.splits.items()}
    lines = [f"# {args.dataset.upper()}: {Path(str(args.data)).name} (train {n['train']}, valid {n['valid']}, "
             f"test {n['test']}), seeds {', '.join(map(str, seeds))}", "",
             "Mean ± sample std over seeds; fractions (MMSA metric names). Best epoch chosen on valid, test evaluated "
             "once.", ""]
    for split in ("test", "valid"):
        lines += [f"## {split}", "", "| model | " + " | ".join(metric_names) + " | s / run |",
                  "|---|" + "---:|" * (len(metric_names) + 1)]
        for spec, e in summary.items():
            cells = [_fmt(e[split][k]["mean"], e[split][k]["std"]) for k in metric_names]
            lines.append(f"| {spec} | " + " | ".join(cells) + f" | {e['seconds']['mean']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def scatter(panels: dict, labels: np.ndarray, path: Path, dataset: str) -> Path:
    from msa.io import save_figure
    from msa.plots import pyplot

    plt = pyplot()
    k = len(panels)
    cols = min(k, 3)
    rows = -(-k // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4 * rows), squeeze=False)
    lim = 1.05 if dataset == "sims" else 3.2
    for ax, (name, (pred, mae, corr)) in zip(axes.flat, panels.items()):
        ax.scatter(labels, pred, s=8, alpha=0.5, color="#2a9d8f", edgecolors="none")
        ax.plot([-lim, lim], [-lim, lim], color="grey", lw=1, ls=":")
        ax.axhline(0, color="#ccc", lw=0.6)
        ax.axvline(0, color="#ccc", lw=0.6)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_xlabel("label")
        ax.set_ylabel("predicted (mean over seeds)")
        ax.set_title(f"{name}: MAE {mae:.3f}, Corr {corr:.3f}", fontsize=9)
    for ax in list(axes.flat)[k:]:
        ax.axis("off")
    fig.suptitle(f"{dataset.upper()} test: predicted vs label")
    fig.tight_layout()
    out = save_figure(fig, path)
    plt.close(fig)
    return out


def _runs_frame(runs: list[dict]) -> pd.DataFrame:
    run_rows = []
    for r in runs:
        row = {k: r[k] for k in ("model", "seed", "best_epoch", "epochs_run", "seconds")}
        for split in ("valid", "test"):
            row.update({f"{split}_{k}": v for k, v in r[split].items()})
        run_rows.append(row)
    return pd.DataFrame(run_rows)


def _metrics_record(summary: dict, runs: list[dict], primary: str, seeds: list[int], dataset: str) -> dict:
    extras = {r["model"] + f"-s{r['seed']}": {k: r[k] for k in ("test_lead_weight_mean", "test_lead_share",
                                                                  "balance_weights") if k in r} for r in runs}
    return {"dataset": dataset, "model": primary, "seeds": seeds,
            "valid": {k: v["mean"] for k, v in summary[primary]["valid"].items()},
            "test": {k: v["mean"] for k, v in summary[primary]["test"].items()},
            "std": {s: {k: v["std"] for k, v in summary[primary][s].items()} for s in ("valid", "test")},
            "models": summary, "cmcbep": {k: v for k, v in extras.items() if v}}


def write_outputs(runs: list[dict], specs: list[str], seeds: list[int], data, args, mods: list[str], device: str,
                  out: Path) -> tuple[Path, Path]:
    """Write OUT's summaries (predictions, runs, tables, metrics, figure, config); return (table.md, figure)."""
    from msa.io import write_csv, write_json, write_text
    from msa.metrics import MMSA_METRICS, mmsa_metrics

    names = MMSA_METRICS[args.dataset]
    summary = summarise(runs, specs, names)
    primary = specs[0]
    test = data.splits["test"]
    mean_pred = {s: np.mean([r["pred_test"] for r in runs if r["model"] == s], axis=0) for s in specs}
    write_csv(out / "test_predictions.csv",
              pd.DataFrame({"id": test.ids, "label": test.labels.astype(np.float64), "pred": mean_pred[primary]}))
    write_csv(out / "runs.csv", _runs_frame(runs))
    write_csv(out / "table.csv", table_frame(summary, names))
    md = write_text(out / "table.md", table_markdown(summary, names, args, data))
    write_json(out / "metrics.json", _metrics_record(summary, runs, primary, seeds, args.dataset))
    panels = {}
    for s in specs:
        m = mmsa_metrics(test.labels, mean_pred[s], args.dataset)
        panels[s] = (mean_pred[s], m["MAE"], m["Corr"])
    fig = scatter(panels, test.labels, out / "figures" / "pred_vs_label.png", args.dataset)
    record = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    write_json(out / "config.json", {"arguments": record, "modalities": mods, "models": specs, "seeds": seeds,
                                     "device": device, "data": data.summary()})
    return md, fig
