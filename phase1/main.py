"""Phase 1: the baseline: frozen text + image backbones, concat fusion, cross-entropy.

Run from the repository root after phase 0:

    python phase1/main.py --data-root dataset/
    python phase1/main.py --name Phase1_Baseline --feature_fusion concat --loss_type ce \\
        --learning_rate 1e-4 --dropout 0.3 --num_epochs 30 --seeds 42,43,44
    python phase1/main.py --preset configs/seed_bert_swinv2.json      # the seed's BERT + SwinV2 folders

Reads  <work-dir>/train_cleaned.txt and splits/<split>.csv (phase 0), <data-root>/data/* (through the
       feature cache under --cache-dir)
Writes phase1/results/<name>-s<seed>/ per seed, and phase1/results/best/ (a copy of the seed with the best
       validation weighted F1): config.json, history.csv, metrics.json, val_predictions.csv,
       checkpoint/ (model.safetensors + config.json), figures/ (training curves, confusion matrix);
       phase1/results/<name>_summary.json and .md (mean and std over seeds, and a logistic-regression probe
       on the same cached features as a reference); phase1/figures/<name>_*.png
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from msa import cli  # noqa: E402

log = logging.getLogger("phase1")
PHASE_DIR = Path(__file__).resolve().parent
DEFAULTS = {
    "text_backbone": "minilm", "text_pooling": None, "image_backbone": "efficientnet_lite0",
    "feature_fusion": "concat", "loss_type": "ce", "learning_rate": 1e-4, "weight_decay": 0.01, "dropout": 0.3,
    "num_epochs": 30, "batch_size": 64, "hidden": 256, "warmup_ratio": 0.1, "scheduler": "cosine", "patience": 6,
}


def build_parser() -> cli.ArgumentParser:
    from msa.fusions import FUSIONS
    from msa.losses import LOSSES

    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0] + "\n\n" + "\n\n".join(__doc__.split("\n\n")[1:]))
    cli.add_data_args(p)
    p.add_argument("--name", default="Phase1_Baseline", help="run name (folder prefix under --results-dir)")
    p.add_argument("--preset", default=None,
                   help="JSON file of defaults (e.g. configs/seed_bert_swinv2.json); explicit flags still win")
    m = p.add_argument_group("model")
    m.add_argument("--text-backbone", default=None,
                   help="text backbone: registry name or local Hugging Face folder "
                        f"(default {DEFAULTS['text_backbone']})")
    m.add_argument("--image-backbone", default=None,
                   help="image backbone: registry name or local Hugging Face folder "
                        f"(default {DEFAULTS['image_backbone']})")
    m.add_argument("--text-pooling", default=None, choices=["mean", "cls", "pooler"],
                   help="sentence vector of the text backbone (default: the backbone's own, mean for minilm)")
    m.add_argument("--feature-fusion", default=None, choices=sorted(FUSIONS),
                   help=f"fusion of the modality features (default {DEFAULTS['feature_fusion']})")
    m.add_argument("--loss-type", default=None, choices=sorted(LOSSES), help="training loss (default ce)")
    m.add_argument("--hidden", type=int, default=None, help="projection width per modality (default 256)")
    m.add_argument("--dropout", type=float, default=None, help="dropout in projections and head (default 0.3)")
    t = p.add_argument_group("training")
    t.add_argument("--learning-rate", type=float, default=None, help="AdamW learning rate (default 1e-4)")
    t.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (default 0.01)")
    t.add_argument("--num-epochs", type=int, default=None, help="maximum epochs (default 30)")
    t.add_argument("--batch-size", type=int, default=None, help="batch size (default 64)")
    t.add_argument("--warmup-ratio", type=float, default=None, help="share of steps with linear warm-up (default 0.1)")
    t.add_argument("--scheduler", default=None, choices=["cosine", "linear", "constant"],
                   help="learning-rate schedule after warm-up (default cosine)")
    t.add_argument("--patience", type=int, default=None,
                   help="stop after this many epochs without a better validation weighted F1 (default 6; 0 = never)")
    t.add_argument("--seeds", default="42", help="comma-separated seeds; one run folder per seed")
    t.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"], help="Accelerate mixed precision")
    o = p.add_argument_group("features and output")
    o.add_argument("--cache-dir", type=Path, default=Path("cache/features"), help="feature cache folder")
    o.add_argument("--feature-batch-size", type=int, default=32, help="batch size of the frozen backbones")
    o.add_argument("--results-dir", type=Path, default=PHASE_DIR / "results", help="where run folders go")
    o.add_argument("--figures-dir", type=Path, default=PHASE_DIR / "figures", help="where summary figures go")
    o.add_argument("--no-probe", action="store_true", help="skip the logistic-regression reference probe")
    o.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def resolve(args) -> dict:
    """Flags over preset over defaults."""
    settings = dict(DEFAULTS)
    if args.preset:
        path = Path(args.preset)
        if not path.is_file():
            raise cli.UserError(f"preset {path} not found (presets live in configs/)")
        try:
            preset = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise cli.UserError(f"preset {path} is not valid JSON: {exc}") from None
        aliases = {"fusion": "feature_fusion", "loss": "loss_type"}
        for k, v in preset.items():
            k = aliases.get(k, k)
            if k in settings:
                settings[k] = v
    for k in settings:
        if getattr(args, k, None) is not None:
            settings[k] = getattr(args, k)
    return settings


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise cli.UserError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise cli.UserError("--seeds is empty")
    return seeds


def main(argv=None) -> int:
    from msa.data import LABELS
    from msa.experiment import labelled_features, load_backbones, load_labelled, train_run
    from msa.fusions import FUSIONS
    from msa.io import write_json, write_text
    from msa.metrics import summarise_runs
    from msa.plots import confusion_matrix, training_curves
    from msa.trainer import TrainConfig

    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)
    s = resolve(args)
    seeds = parse_seeds(args.seeds)
    data = load_labelled(cli.work_dir(args), args.split)
    tb, ib = load_backbones(s["text_backbone"], s["image_backbone"], s["text_pooling"])
    tokens = getattr(FUSIONS[s["feature_fusion"]], "requires_tokens", False)
    fs = labelled_features(Path(args.data_root) / "data", data.guids, tb, ib, args.cache_dir, tokens,
                           args.feature_batch_size)
    record = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()} | {"resolved": s}
    runs = []
    for seed in seeds:
        cfg = TrainConfig(learning_rate=s["learning_rate"], weight_decay=s["weight_decay"],
                          num_epochs=s["num_epochs"], batch_size=s["batch_size"], warmup_ratio=s["warmup_ratio"],
                          scheduler=s["scheduler"], patience=s["patience"], seed=seed,
                          mixed_precision=args.mixed_precision)
        run_dir = args.results_dir / f"{args.name}-s{seed}"
        res = train_run(run_dir, fs, data, fusion=s["feature_fusion"], loss=s["loss_type"], train_cfg=cfg,
                        hidden=s["hidden"], dropout=s["dropout"], args_record=record)
        m = res["metrics"]
        print(f"seed {seed}: val accuracy {m['accuracy']:.4f}  weighted F1 {m['weighted_f1']:.4f}  "
              f"neutral F1 {m['f1_neutral']:.4f}  (best epoch {m['best_epoch']}) -> {run_dir}")
        runs.append(m)
        if len(runs) == 1:
            training_curves(res["history"], args.figures_dir / f"{args.name}_training_curves.png",
                            title=f"{args.name}, seed {seed}")
    total_cm = [[sum(r["confusion_matrix"][i][j] for r in runs) for j in range(len(LABELS))]
                for i in range(len(LABELS))]
    confusion_matrix(total_cm, LABELS, args.figures_dir / f"{args.name}_confusion_matrix.png",
                     title=f"{args.name}: validation, {len(runs)} seed(s) summed")
    best_seed = seeds[max(range(len(runs)), key=lambda i: runs[i]["weighted_f1"])]
    best_dir = copy_run(args.results_dir / f"{args.name}-s{best_seed}", args.results_dir / "best")
    print(f"best seed on validation: {best_seed} -> {best_dir} (predict_test's default after phase 4/3)")
    summary = {"name": args.name, "seeds": seeds, "best_seed": best_seed, "settings": s, "split": data.split.name,
               "runs": summarise_runs(runs)}
    if not args.no_probe:
        summary["probe"] = logistic_probe(fs, data)
    write_json(args.results_dir / f"{args.name}_summary.json", summary)
    md = write_text(args.results_dir / f"{args.name}_summary.md", summary_markdown(summary))
    print(f"summary over {len(seeds)} seed(s) -> {md}")
    return 0


def copy_run(src: Path, dst: Path) -> Path:
    """Copy a run folder to ``dst`` atomically (temporary copy, then rename over the old one)."""
    import os
    import shutil

    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    (tmp / "SOURCE").write_text(f"{src.name}\n", encoding="utf-8")
    old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
    if dst.exists():
        os.replace(dst, old)
    os.replace(tmp, dst)
    shutil.rmtree(old, ignore_errors=True)
    return dst


def logistic_probe(fs, data) -> dict:
    """Reference: multinomial logistic regression on the standardised, concatenated pooled features, its
    regularisation chosen by 5-fold cross-validation on the training split (deterministic: no seed)."""
    import warnings

    import numpy as np
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from msa.data import LABELS
    from msa.metrics import classification_metrics

    x = np.concatenate([fs.pooled[m].numpy() for m in fs.pooled], axis=1)
    clf = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2], cv=5,
                                                               scoring="f1_weighted", max_iter=3000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's FutureWarnings about its own defaults
        clf.fit(x[data.train_idx], data.labels[data.train_idx])
    proba = clf.predict_proba(x[data.val_idx])
    out = classification_metrics(data.labels[data.val_idx], proba.argmax(1), proba, labels=LABELS)
    out["C"] = float(clf[-1].C_[0])
    return out


def summary_markdown(summary: dict) -> str:
    r = summary["runs"]
    keys = [("accuracy", "accuracy"), ("weighted_f1", "weighted F1"), ("macro_f1", "macro F1"),
            ("f1_neutral", "neutral F1"), ("ece", "ECE")]

    def cell(k):
        v = r.get(k)
        return f"{v['mean']:.4f} ± {v['std']:.4f}" if isinstance(v, dict) else "-"

    lines = [f"# {summary['name']} (split `{summary['split']}`, seeds {', '.join(map(str, summary['seeds']))})", "",
             "| model | " + " | ".join(n for _, n in keys) + " |", "|---|" + "---:|" * len(keys),
             f"| {summary['settings']['feature_fusion']} + {summary['settings']['loss_type']} | "
             + " | ".join(cell(k) for k, _ in keys) + " |"]
    if "probe" in summary:
        p = summary["probe"]
        lines.append("| logistic-regression probe (same features) | "
                     + " | ".join(f"{p[k]:.4f}" if k in p else "-" for k, _ in keys) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
