"""The class-imbalance stage (phase 3): where it starts (phase 2's best_config.json), the loss x sampler x seed
grid, the summary table, each loss against cross-entropy with its standard error, the selection of the best run
(copied to best/, named by best.json) and the data of its figures. ``phase3/run_phase3.py`` is the front end
(flags, the up-to-date check, writing the files and figures).

* :func:`load_start_config`, :func:`warn_if_other_split`, :func:`loss_keywords`, :func:`check_losses`: the starting
  configuration and the losses;
* :func:`grid_features`, :func:`grid_specs`, :func:`runs_frame`: the features, the runs and their table;
* :func:`summarise`, :func:`compare_with_ce`, :func:`select_best`, :func:`header`, :func:`markdown`,
  :func:`summary_json`: what is written;
* :func:`figure_data`: pooled validation predictions for the reliability diagrams and confusion matrices.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from msa import cli
from msa.metrics import pm

log = logging.getLogger("phase3")  # the stage's messages keep the name they have always had
METRICS = ("accuracy", "weighted_f1", "macro_f1", "f1_neutral", "ece", "best_epoch", "seconds")
TABLE_METRICS = (("accuracy", "accuracy"), ("weighted_f1", "weighted F1"), ("macro_f1", "macro F1"),
                 ("f1_neutral", "neutral F1"), ("ece", "ECE"))
SELECT_METRICS = ("weighted_f1", "macro_f1", "f1_neutral", "accuracy")
DEFAULT_SAMPLERS = "none,balanced"


# ----------------------------------------------------------------------------------------------- inputs
def load_start_config(path: Path) -> tuple[dict | None, dict]:
    """Phase 2's ``best_config.json``: ``(settings or None, description of where phase 3 started)``."""
    from msa.settings import read_json_file

    path = Path(path)
    if not path.is_file():
        log.warning("%s not found: phase 2 was not run (python phase2/run_phase2.py), so phase 3 starts from the "
                    "built-in defaults (msa.settings.DEFAULTS) and explicit flags", path)
        return None, {"path": None, "source": "built-in defaults (phase 2 was not run: "
                      f"{path} not found)"}
    cfg = read_json_file(path, "--best-config")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("settings"), dict):
        raise cli.UserError(f"--best-config {path} has no 'settings' object: is it phase 2's best_config.json?")
    start = {"path": str(path.resolve()), "source": str(cfg.get("source", path)),
             "selected_by": cfg.get("selected_by"), "split": cfg.get("split"),
             "split_sha256": cfg.get("split_sha256"), "metrics": cfg.get("metrics")}
    return cfg["settings"], start


def warn_if_other_split(start: dict, data) -> None:
    """A warning when phase 2 chose its configuration on another split than the one phase 3 trains on."""
    if start.get("split") not in (None, data.split.name) or start.get("split_sha256") not in (None, data.split.sha256):
        log.warning("phase 2 chose its configuration on split %r (sha256 %s), phase 3 trains on %r (sha256 %s)",
                    start.get("split"), str(start.get("split_sha256"))[:12], data.split.name, data.split.sha256[:12])


def loss_keywords(args) -> dict[str, dict]:
    """Keywords of every loss from the flags (only those the chosen variant uses, so config.json is exact)."""
    wce: dict = {"weights": args.wce_weights}
    if args.wce_weights == "inverse":
        wce["weight_power"] = args.weight_power
    else:
        wce["cb_beta"] = args.cb_beta
    focal: dict = {"gamma": args.focal_gamma, "alpha": None if args.focal_alpha == "none" else "counts"}
    if args.focal_alpha == "counts":
        focal["weight_power"] = args.weight_power
    acb: dict = {"a": args.acb_a, "b": args.acb_b, "c": args.acb_c, "k": args.acb_k, "alpha": args.acb_alpha,
                 "beta": args.acb_beta, "momentum": args.acb_momentum,
                 "class_balance": None if args.acb_class_balance == "none" else args.acb_class_balance}
    if args.acb_class_balance == "inverse":
        acb["weight_power"] = args.weight_power
    elif args.acb_class_balance == "effective_number":
        acb["cb_beta"] = args.cb_beta
    return {"ce": {}, "weighted_ce": wce, "focal": focal, "acb": acb}


def check_losses(losses: list[str], kws: dict[str, dict], data) -> None:
    """Build every loss once with the training counts, so that bad constants are one error before any training."""
    import numpy as np

    from msa.data import LABELS
    from msa.losses import build_loss

    counts = np.bincount(data.labels[data.train_idx], minlength=len(LABELS)).tolist()
    for loss in losses:
        build_loss(loss, class_counts=counts, **kws[loss])


# ----------------------------------------------------------------------------------------------- runs
def grid_features(s: dict, data, data_dir: Path, cache_dir: Path, batch_size: int):
    """The features of every labelled post, with the token sequences the fusion needs and the side features."""
    from msa.experiment import labelled_features, load_backbones, token_modalities

    tb, ib = load_backbones(s["text_backbone"], s["image_backbone"], s["text_pooling"])
    return labelled_features(data_dir, data.guids, tb, ib, cache_dir, token_modalities(s["feature_fusion"]),
                             batch_size, side=s["side_features"])


def grid_specs(s: dict, methods: list[tuple[str, str]], seeds: list[int], kws: dict[str, dict], runs_dir: Path,
               mixed_precision, resume) -> list:
    """One run per loss x sampler x seed, with checkpoints (phase 4 starts from the best)."""
    from msa.experiment import RunSpec

    return [RunSpec(runs_dir / f"{loss}-{sampler}-s{seed}", {**s, "loss_type": loss, "sampler": sampler}, seed,
                    loss_kw=kws[loss], light=False, tag=f"{loss}-{sampler}", mixed_precision=mixed_precision,
                    resume=resume)
            for loss, sampler in methods for seed in seeds]


def runs_frame(specs: list, results: list[dict]):
    """runs.csv: one row per run (loss, sampler, seed, metrics, run folder)."""
    import pandas as pd

    runs = pd.DataFrame([{"loss": sp.settings["loss_type"], "sampler": sp.settings["sampler"], **r}
                         for sp, r in zip(specs, results)])
    return runs.drop(columns=[c for c in ("confusion_matrix", "labels", "tag") if c in runs])


# ----------------------------------------------------------------------------------------------- tables
def summarise(runs, methods: list[tuple[str, str]]):
    """One row per (loss, sampler) in ``methods`` order: mean and std (ddof=1) over seeds of METRICS."""
    import pandas as pd

    from msa.metrics import mean_std_columns

    rows = []
    for loss, sampler in methods:
        grp = runs[(runs["loss"] == loss) & (runs["sampler"] == sampler)]
        rows.append({"method": f"{loss}-{sampler}", "loss": loss, "sampler": sampler, "n_seeds": len(grp),
                     **mean_std_columns(grp, METRICS, present_only=False)})
    return pd.DataFrame(rows).set_index("method")


def compare_with_ce(runs, table, metric: str = "f1_neutral") -> list[dict]:
    """Each non-ce loss against ce with the same sampler on ``metric``: difference of the means, its standard
    error sqrt(s1^2/n1 + s2^2/n2), Welch's t-test p-value, and the seed-paired mean difference."""
    from scipy import stats

    out = []
    for method, r in table.iterrows():
        ref = f"ce-{r['sampler']}"
        if r["loss"] == "ce" or ref not in table.index:
            continue
        a = runs[(runs["loss"] == r["loss"]) & (runs["sampler"] == r["sampler"])].set_index("seed")[metric]
        b = runs[(runs["loss"] == "ce") & (runs["sampler"] == r["sampler"])].set_index("seed")[metric]
        diff = float(a.mean() - b.mean())
        se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)) if min(len(a), len(b)) > 1 else float("nan")
        p = float(stats.ttest_ind(a, b, equal_var=False).pvalue) if min(len(a), len(b)) > 1 and se > 0 \
            else float("nan")
        common = a.index.intersection(b.index)
        paired = (a[common] - b[common])
        out.append({"method": method, "reference": ref, "metric": metric, "difference": diff, "se": se,
                    "welch_p": p, "beyond_noise": bool(se > 0 and abs(diff) > 2 * se),
                    "paired_wins": int((paired > 0).sum()), "paired_n": int(len(paired))})
    return out


def select_best(runs, table, metric: str, results_dir: Path, ctx: dict) -> dict:
    """The best loss x sampler by its mean ``metric``, then its best seed, copied to ``results_dir``/best (phase 4
    starts from that checkpoint); returns best.json. ``ctx``: settings, loss_kw, data, start, seeds, n_methods."""
    from msa.checkpoint import copy_run_dir

    s, kws, data = ctx["settings"], ctx["loss_kw"], ctx["data"]
    best_method = str(table[f"{metric}_mean"].idxmax())
    cand = runs[(runs["loss"] == table.loc[best_method, "loss"]) & (runs["sampler"] == table.loc[best_method,
                                                                                                  "sampler"])]
    best_row = cand.loc[cand[metric].idxmax()]
    best_dir = copy_run_dir(Path(best_row["run_dir"]), results_dir / "best")
    return {"method": best_method, "loss": str(best_row["loss"]), "sampler": str(best_row["sampler"]),
            "seed": int(best_row["seed"]), "select_metric": metric, "value": float(best_row[metric]),
            "selected_by": f"best mean validation {metric} over seeds {ctx['seeds']} among {ctx['n_methods']} loss "
                           f"x sampler combinations, then the best seed", "run_dir": str(best_row["run_dir"]),
            "copied_to": str(best_dir), "checkpoint": str(best_dir / "checkpoint"),
            "metrics": {k: float(best_row[k]) for k in METRICS},
            "method_mean": {k: {"mean": float(table.loc[best_method, f"{k}_mean"]),
                                "std": float(table.loc[best_method, f"{k}_std"])} for k in METRICS},
            "loss_kw": kws[str(best_row["loss"])], "settings": {**s, "loss_type": str(best_row["loss"]),
                                                                 "sampler": str(best_row["sampler"])},
            "split": data.split.name, "split_sha256": data.split.sha256, "started_from": ctx["start"],
            "seeds": ctx["seeds"], "seed_runs": [str(p) for p in cand["run_dir"]]}


def _table_lines(table, best: dict) -> list[str]:
    lines = ["| loss | sampler | " + " | ".join(n for _, n in TABLE_METRICS) + " | best epoch | s/run |",
             "|---|---|" + "---:|" * (len(TABLE_METRICS) + 2)]
    for method, r in table.iterrows():
        cells = [pm(r, k) for k, _ in TABLE_METRICS]
        name = f"**{r['loss']}**" if method == best["method"] else r["loss"]
        lines.append(f"| {name} | {r['sampler']} | " + " | ".join(cells)
                     + f" | {r['best_epoch_mean']:.1f} | {r['seconds_mean']:.1f} |")
    return lines


def _comparison_lines(comparisons: list[dict]) -> list[str]:
    if not comparisons:
        return []
    lines = ["", "Neutral F1 against ce with the same sampler (difference of means ± its standard error; "
             "Welch's t-test; seeds where the loss beat ce with the same seed):", "",
             "| loss-sampler | vs | Δ neutral F1 | Welch p | seed wins | beyond noise (|Δ| > 2 SE) |",
             "|---|---|---:|---:|---:|---|"]
    for c in comparisons:
        lines.append(f"| {c['method']} | {c['reference']} | {c['difference']:+.4f} ± {c['se']:.4f} | "
                     f"{c['welch_p']:.3f} | {c['paired_wins']}/{c['paired_n']} | "
                     f"{'yes' if c['beyond_noise'] else 'no'} |")
    return lines


def header(data, seeds: list[int], n_runs: int, seconds: float) -> str:
    """summary.md's title line."""
    return (f"# Phase 3: losses x samplers (split `{data.split.name}`, {len(data.val_idx)} validation posts, "
            f"seeds {', '.join(map(str, seeds))}, {n_runs} runs in {seconds:.0f} s)")


def markdown(table, comparisons: list[dict], start: dict, settings: dict, best: dict, header: str,
             select_metric: str) -> str:
    lines = [header, "", f"Started from: {start['source']}" + (f" (`{start['path']}`)" if start.get("path") else ""),
             ""]
    if start.get("selected_by"):
        lines += [f"Phase 2 selected it by {start['selected_by']}.", ""]
    keys = ("feature_fusion", "hidden", "dropout", "learning_rate", "weight_decay", "batch_size", "num_epochs",
            "patience")
    hp = ", ".join(f"{k} {settings[k]:.4g}" if isinstance(settings[k], float) else f"{k} {settings[k]}" for k in keys)
    lines += [f"Configuration: text `{settings['text_backbone']}`, image `{settings['image_backbone']}`, {hp}.", "",
              "Mean ± std over seeds on the validation split; ECE with 15 bins (lower is better). The selected row "
              f"(best mean {select_metric}) is in bold.", ""]
    lines += _table_lines(table, best) + _comparison_lines(comparisons)
    lines += ["", f"Best run: `{best['method']}` seed {best['seed']} ({select_metric} {best['value']:.4f}) "
              f"-> `{best['copied_to']}`."]
    return "\n".join(lines) + "\n"


def summary_json(table, comparisons: list[dict], best: dict, ctx: dict, losses: list[str], metric: str,
                 seconds: float) -> dict:
    """summary.json: where phase 3 started, its settings and losses, the table, the comparisons and the best run."""
    data, kws = ctx["data"], ctx["loss_kw"]
    return {"started_from": ctx["start"], "settings": ctx["settings"], "loss_kw": {k: kws[k] for k in losses},
            "seeds": ctx["seeds"], "split": data.split.name, "split_sha256": data.split.sha256,
            "select_metric": metric, "table": table.reset_index().to_dict(orient="records"), "vs_ce": comparisons,
            "best": best, "seconds": round(seconds, 1)}


# ----------------------------------------------------------------------------------------------- figures
def figure_data(table, methods: list[tuple[str, str]], specs: list) -> tuple[dict, dict]:
    """Per loss x sampler, the validation predictions of all seeds: pooled ``(probabilities, labels)`` for the
    reliability diagrams, and the confusion matrix summed over seeds (titled with its neutral F1)."""
    import numpy as np
    import pandas as pd

    from msa.data import LABELS

    panels, matrices = {}, {}
    for (loss, sampler), method in zip(methods, table.index):
        preds = [pd.read_csv(Path(sp.run_dir) / "val_predictions.csv") for sp in specs
                 if sp.settings["loss_type"] == loss and sp.settings["sampler"] == sampler]
        pooled = pd.concat(preds, ignore_index=True)
        y = pooled["label"].map({lab: i for i, lab in enumerate(LABELS)}).to_numpy()
        proba = pooled[[f"p_{lab}" for lab in LABELS]].to_numpy()
        name = f"{loss}, sampler {sampler}"
        panels[name] = (proba, y)
        cm = np.zeros((len(LABELS), len(LABELS)), dtype=int)
        np.add.at(cm, (y, proba.argmax(1)), 1)
        matrices[f"{name}\nneutral F1 {pm(table.loc[method], 'f1_neutral')}"] = cm
    return panels, matrices
