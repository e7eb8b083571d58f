"""Seed 004: text + audio + vision sentiment regression on MMSA feature files (CMU-MOSI, CMU-MOSEI, CH-SIMS), with
the MMSA toolkit's metric set, per-modality sequence encoders + a fusion, and CMCBEP.

Run from the repository root (the feature file is yours: the project does not ship it; the MMSA toolkit,
github.com/thuiar/MMSA, links its processed files under "Processed Datasets"):

    python tasks/mosi/run_mosi.py --data MOSI/Processed/unaligned_50.pkl --dataset mosi
    python tasks/mosi/run_mosi.py --data unaligned_50.pkl --convert     # writes unaligned_50.safetensors + .json
    python tasks/mosi/run_mosi.py --data unaligned_50.safetensors --dataset mosi \\
        --model mean,lstm,transformer,cmcbep --seeds 42,43,44 --out tasks/mosi/results/mosi
    python tasks/mosi/run_mosi.py --data SIMS/Processed/unaligned_39.pkl --dataset sims --model cmcbep \\
        --lead auto --cl-weight 0.1 --unimodal-labels
    python tasks/mosi/run_mosi.py --make-synthetic /tmp/mosi_demo.pkl   # a 700-sample MOSI-sized demo file

Reading. The pickle is unpickled by a restricted loader that admits numpy arrays, dtypes and plain containers
only; any other object is refused with an error naming the file, and nothing from it runs. --convert writes a
safetensors + JSON copy that later runs load with --data X.safetensors (no unpickling at all). Missing keys, sample
counts that differ between fields, an empty train / valid / test split, bad lengths, non-finite labels and a damaged
or edited converted copy are one-line errors, before any training; NaN/+-inf features are replaced by 0 and lengths
longer than the sequence clipped (both counted, logged, and listed in config.json).

Models (--model, comma-separated, each NAME or NAME+FUSION): mean, lstm, transformer = that sequence encoder per
modality -> a fusion of msa.fusions (--fusion) -> a regression head; cmcbep = seed 004's lead-modality
supplementation + cross-modal InfoNCE + balanced prediction (msa.seq_models.CMCBEP; an implementation of the
described idea, not a reproduction of the paper's numbers). Features are standardised per dimension with training
statistics. L1 loss by default (--loss mse). The best epoch is chosen on `valid` (lowest validation loss: MAE
with L1), with early stopping; `test` is evaluated once, at the end.

Metrics (MMSA's definitions and names, as fractions): mosi/mosei: MAE, Corr, Has0_acc_2, Has0_F1_score
(negative vs non-negative), Non0_acc_2, Non0_F1_score (zero labels excluded), Mult_acc_5, Mult_acc_7 (clip to
+-2 / +-3, round); sims: Mult_acc_2, Mult_acc_3, Mult_acc_5 (clip to [-1, 1], fixed intervals), F1_score, MAE, Corr.

Writes OUT (--out, default tasks/mosi/results/<dataset>):
    metrics.json          {"valid": {...}, "test": {...}} of the first --model (mean over seeds), "std", and every
                          model's {"valid"/"test": {metric: {mean, std, per_seed}}}
    test_predictions.csv  id,label,pred of the first --model (pred = mean over seeds)
    table.csv, table.md   models x metrics on test (and valid in the .md): mean and std over seeds, seconds per run
    runs.csv              one line per model x seed: best epoch, epochs run, seconds, valid and test metrics
    figures/pred_vs_label.png   predicted vs label on test, one panel per model
    runs/<model>-s<seed>/ config.json, history.csv, metrics.json, valid_predictions.csv, test_predictions.csv,
                          checkpoint/ (model.safetensors + config.json)
    config.json, inputs.json   resolved arguments and data summary; the record that makes a rerun with the same
                          inputs a no-op (--force recomputes)
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from msa import cli, stamp

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


def build_parser() -> cli.ArgumentParser:
    from msa.seq_models import ENCODERS, LOSSES, MODELS, POOLED_FUSIONS

    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0] + "\n\n" + "\n\n".join(__doc__.split("\n\n")[1:]))
    d = p.add_argument_group("data")
    d.add_argument("--data", type=Path, default=None,
                   help="MMSA feature file: the toolkit's pickle (e.g. MOSI/Processed/unaligned_50.pkl), or the "
                        "X.safetensors (+ X.json) copy written by --convert (never modified)")
    d.add_argument("--dataset", choices=DATASETS, default="mosi",
                   help="which metric set: mosi / mosei (labels in [-3, 3]) or sims (CH-SIMS, labels in [-1, 1])")
    d.add_argument("--modalities", default="text,audio,vision",
                   help="comma-separated modalities to use, from text, audio, vision (cmcbep needs two or more)")
    d.add_argument("--convert", action="store_true",
                   help="write a safetensors + JSON copy of the --data pickle (next to it, or --convert-out) and exit; "
                        "later runs load it with --data X.safetensors without unpickling")
    d.add_argument("--convert-out", type=cli.output_file, default=None,
                   help="path stem of the converted copy (default: the pickle's path without .pkl)")
    d.add_argument("--make-synthetic", type=cli.output_file, default=None, metavar="FILE",
                   help="write a synthetic MMSA-layout pickle (planted learnable signal, -inf audio entries, variable "
                        "lengths; text 50x768, audio 50x5, vision 50x20 like MOSI) to FILE and exit")
    d.add_argument("--synthetic-samples", type=cli.positive_int, default=700,
                   help=f"samples in the --make-synthetic file (10 to {MAX_SYNTHETIC})")
    d.add_argument("--synthetic-seed", type=cli.non_negative_int, default=0,
                   help="random seed of the --make-synthetic file")
    m = p.add_argument_group("model")
    m.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"comma-separated models, each NAME or NAME+FUSION; NAME from {', '.join(MODELS)} "
                        f"(mean/lstm/transformer = that encoder per modality: {', '.join(ENCODERS)}); the first "
                        "one's results fill OUT/metrics.json and OUT/test_predictions.csv")
    m.add_argument("--fusion", default="concat", choices=POOLED_FUSIONS,
                   help="fusion of the encoded modalities (msa.fusions) for models given without +FUSION")
    m.add_argument("--hidden", type=cli.positive_int, default=64,
                   help=f"width of the encoders, projections and heads (at most {MAX_HIDDEN})")
    m.add_argument("--dropout", type=cli.fraction, default=0.1,
                   help="dropout in encoders, projections and heads (0 <= p < 1)")
    m.add_argument("--max-frames", type=cli.non_negative_int, default=100,
                   help="a modality whose sequences are longer (the unaligned files' audio and vision: 375-500 "
                        "frames) has its frames averaged in windows of ceil(L / max-frames), so at most this many "
                        "remain; attention cost grows with the square of the length (0 = keep every frame)")
    c = p.add_argument_group("cmcbep")
    c.add_argument("--cmcbep-encoder", default="transformer", choices=list(ENCODERS),
                   help="sequence encoder of cmcbep (its cross-attention needs the frame sequences)")
    c.add_argument("--lead", default="auto",
                   help="lead modality that supplements the others through cross-attention: text, audio, vision, or "
                        "auto (a learned per-sample softmax over the modalities)")
    c.add_argument("--cl-weight", type=cli.non_negative_float, default=0.1,
                   help="weight of the cross-modal InfoNCE loss (0 = off)")
    c.add_argument("--cl-temperature", type=cli.positive_float, default=0.1, help="InfoNCE temperature (> 0)")
    c.add_argument("--aux-weight", type=cli.non_negative_float, default=0.5,
                   help="weight of the losses of the unimodal and fused predictions that the balanced prediction "
                        "combines (0 = only the combined prediction is trained)")
    c.add_argument("--unimodal-labels", action="store_true",
                   help="train cmcbep's unimodal predictions on regression_labels_T/A/V where the file has them "
                        "(CH-SIMS), else on the multimodal label")
    t = p.add_argument_group("training")
    t.add_argument("--loss", choices=list(LOSSES), default="l1",
                   help="regression loss (L1 = MAE, what most of MMSA's regression trainers use)")
    t.add_argument("--epochs", type=cli.positive_int, default=30, help="maximum epochs per run")
    t.add_argument("--patience", type=cli.non_negative_int, default=8,
                   help="stop after this many epochs without a lower validation loss (0 = never)")
    t.add_argument("--batch-size", type=cli.positive_int, default=32, help="samples per step")
    t.add_argument("--learning-rate", type=cli.positive_float, default=1e-3,
                   help="AdamW learning rate (warm-up + cosine)")
    t.add_argument("--weight-decay", type=cli.non_negative_float, default=0.01, help="AdamW weight decay")
    t.add_argument("--warmup-ratio", type=cli.fraction, default=0.1, help="share of steps with linear warm-up")
    t.add_argument("--seeds", default="42,43,44",
                   help="comma-separated seeds (integers 0 .. 2^32-1); every model is trained once per seed")
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where to train (auto: cuda when available)")
    t.add_argument("--threads", type=cli.non_negative_int, default=1,
                   help="torch CPU threads (the models are small: one thread is fastest on a shared or small CPU; "
                        "0 = torch's default)")
    o = p.add_argument_group("output")
    o.add_argument("--out", type=cli.output_dir, default=None,
                   help="output folder (default tasks/mosi/results/<dataset>)")
    stamp.add_force_arg(o)
    o.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _check_args(args) -> tuple[list[str], list[str], list[int]]:
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


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)
    from msa import mmsa

    if args.make_synthetic is not None:
        if not 10 <= args.synthetic_samples <= MAX_SYNTHETIC:
            raise cli.UserError(f"--synthetic-samples must be 10 to {MAX_SYNTHETIC}, got {args.synthetic_samples}")
        path = mmsa.write_synthetic(args.make_synthetic, n=args.synthetic_samples, seed=args.synthetic_seed,
                                    dataset="sims" if args.dataset == "sims" else "mosi")
        print(f"synthetic MMSA file ({args.synthetic_samples} samples) -> {path}")
        return 0
    if args.data is None:
        raise cli.UserError("--data FILE is required (an MMSA feature file, or its --convert copy)")
    if args.convert:
        st, js = mmsa.convert(args.data, args.convert_out)
        print(f"converted {args.data} -> {st} + {js}; later runs: --data {st}")
        return 0
    mods, specs, seeds = _check_args(args)
    out = args.out if args.out is not None else TASK_DIR / "results" / args.dataset
    data_files = [args.data] + ([mmsa.converted_paths(args.data)[1]] if mmsa.is_converted(args.data) else [])
    stamp_path = out / "inputs.json"
    inputs = stamp.inputs_of(args, files=data_files, code=[Path(__file__)])
    if stamp.check(stamp_path, inputs, args.force, "tasks/mosi"):
        print(f"tasks/mosi: up to date ({out}); --force recomputes")
        return 0
    import torch

    from msa.io import write_csv, write_json, write_text
    from msa.metrics import MMSA_METRICS
    from msa.seq_models import SeqTensors, feature_stats

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    t0 = time.time()
    data = mmsa.load_mmsa(args.data, mods)
    _check_labels(data, args.dataset)
    if args.unimodal_labels and not data.splits["train"].unimodal_labels:
        log.warning("--unimodal-labels: the file has no regression_labels_T/A/V; the multimodal label is used")
    log.info("loaded %s in %.1f s: %s", args.data, time.time() - t0, data.summary()["n"])
    stats = feature_stats(data.splits["train"], mods)
    tensors = {s: SeqTensors(data.splits[s], mods) for s in mmsa.SPLITS}
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
    summary = summarise(runs, specs, names)
    primary = specs[0]
    test = data.splits["test"]
    mean_pred = {s: np.mean([r["pred_test"] for r in runs if r["model"] == s], axis=0) for s in specs}
    write_csv(out / "test_predictions.csv",
              pd.DataFrame({"id": test.ids, "label": test.labels.astype(np.float64), "pred": mean_pred[primary]}))
    run_rows = []
    for r in runs:
        row = {k: r[k] for k in ("model", "seed", "best_epoch", "epochs_run", "seconds")}
        for split in ("valid", "test"):
            row.update({f"{split}_{k}": v for k, v in r[split].items()})
        run_rows.append(row)
    write_csv(out / "runs.csv", pd.DataFrame(run_rows))
    write_csv(out / "table.csv", table_frame(summary, names))
    md = write_text(out / "table.md", table_markdown(summary, names, args, data))
    extras = {r["model"] + f"-s{r['seed']}": {k: r[k] for k in ("test_lead_weight_mean", "test_lead_share",
                                                                  "balance_weights") if k in r} for r in runs}
    metrics = {"dataset": args.dataset, "model": primary, "seeds": seeds,
               "valid": {k: v["mean"] for k, v in summary[primary]["valid"].items()},
               "test": {k: v["mean"] for k, v in summary[primary]["test"].items()},
               "std": {s: {k: v["std"] for k, v in summary[primary][s].items()} for s in ("valid", "test")},
               "models": summary, "cmcbep": {k: v for k, v in extras.items() if v}}
    write_json(out / "metrics.json", metrics)
    from msa.metrics import mmsa_metrics

    panels = {}
    for s in specs:
        m = mmsa_metrics(test.labels, mean_pred[s], args.dataset)
        panels[s] = (mean_pred[s], m["MAE"], m["Corr"])
    fig = scatter(panels, test.labels, out / "figures" / "pred_vs_label.png", args.dataset)
    record = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    write_json(out / "config.json", {"arguments": record, "modalities": mods, "models": specs, "seeds": seeds,
                                     "device": device, "data": data.summary()})
    stamp.write(stamp_path, inputs, [md, out / "metrics.json", out / "test_predictions.csv", fig])
    print(f"{len(specs)} model(s) x {len(seeds)} seed(s) in {time.time() - t0:.0f} s -> {md}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
