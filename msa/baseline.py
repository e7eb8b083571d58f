"""Phase 1 as a stage: the baseline trained once per seed on phase 0's split (run folders, the first seed's training
curves, the confusion matrix summed over seeds, best/ = the seed with the best validation weighted F1), the
logistic-regression reference probe on the same cached features, and the summary. ``phase1/main.py`` is the front
end (flags, stamp).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from msa import cli


def run(args, s, seeds: list[int], say: Callable[[str], None] = print) -> tuple[Path, Path]:
    """Phase 1 on the parsed flags of ``phase1/main.py`` with the resolved settings ``s``; ``say`` prints the
    per-seed and best-seed lines as they happen. Returns ``(the summary .md, best/)``."""
    from msa.checkpoint import copy_run_dir
    from msa.data import LABELS
    from msa.experiment import labelled_features, load_backbones, load_labelled, token_modalities, train_run
    from msa.io import write_json, write_text
    from msa.metrics import summarise_runs
    from msa.plots import confusion_matrix, training_curves
    from msa.settings import train_config

    data = load_labelled(cli.work_dir(args), args.split)
    tb, ib = load_backbones(s["text_backbone"], s["image_backbone"], s["text_pooling"], args.cache_dir)
    fs = labelled_features(Path(args.data_root) / "data", data.guids, tb, ib, args.cache_dir,
                           token_modalities(s["feature_fusion"]),
                           args.feature_batch_size, side=s["side_features"])
    record = cli.args_record(args) | {"resolved": s}
    runs = []
    for seed in seeds:
        cfg = train_config(s, seed, args.mixed_precision)
        run_dir = args.results_dir / f"{args.name}-s{seed}"
        res = train_run(run_dir, fs, data, fusion=s.feature_fusion, loss=s.loss_type, train_cfg=cfg,
                        hidden=s.hidden, dropout=s.dropout, args_record=record, resume=args.resume, settings=s)
        m = res["metrics"]
        say(f"seed {seed}: val accuracy {m['accuracy']:.4f}  weighted F1 {m['weighted_f1']:.4f}  "
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
    best_dir = copy_run_dir(args.results_dir / f"{args.name}-s{best_seed}", args.results_dir / "best")
    say(f"best seed on validation: {best_seed} -> {best_dir} (predict_test's default after phase 4/3)")
    summary = {"name": args.name, "seeds": seeds, "best_seed": best_seed, "settings": s, "split": data.split.name,
               "runs": summarise_runs(runs)}
    if not args.no_probe:
        summary["probe"] = logistic_probe(fs, data)
    write_json(args.results_dir / f"{args.name}_summary.json", summary)
    md = write_text(args.results_dir / f"{args.name}_summary.md", summary_markdown(summary))
    return md, best_dir


def logistic_probe(fs, data, n_jobs: int | None = None) -> dict:
    """Reference: multinomial logistic regression on the standardised, concatenated pooled features, its
    regularisation chosen by 5-fold cross-validation on the training split (deterministic: no seed).

    The 5 folds' regularisation paths are fitted in ``n_jobs`` threads (None: one per core; the solver and BLAS
    release the GIL) of one BLAS thread each, as :func:`msa.probes.fit_logreg_cv` does: 2.7x faster here than
    one fold after the other with two BLAS threads (which only spin on these small matrices); the same C and
    metrics (ECE to ~1e-15)."""
    import warnings

    import numpy as np
    from joblib import parallel_backend
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    from msa.data import LABELS
    from msa.fusions import SIDE
    from msa.metrics import classification_metrics
    from msa.workers import cores

    x = np.concatenate([fs.pooled[m].numpy() for m in fs.pooled if m != SIDE], axis=1)
    if n_jobs is None:
        n_jobs = cores()
    clf = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2], cv=5,
                                                               scoring="f1_weighted", max_iter=3000,
                                                               n_jobs=n_jobs))
    # threads, not the processes sklearn starts for lbfgs
    with warnings.catch_warnings(), parallel_backend("threading"), threadpool_limits(limits=1):
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
