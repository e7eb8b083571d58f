"""Phase 3: trains phase 2's best configuration with every class-imbalance loss (ce, weighted_ce, focal, acb),
with and without a class-balanced sampler, and writes runs, tables and best/ to phase3/results/.

Run from the repository root after phase 0 (and, ideally, phase 2, whose best configuration it starts from):

    python phase3/run_phase3.py --data-root dataset/
    python phase3/run_phase3.py --data-root ../shared/mvsa --losses ce,acb --samplers none,balanced \\
        --seeds 42,43,44 --acb-beta 0.1 --select-metric f1_neutral

Starts from phase2/results/best_config.json (--best-config): its "settings" (fusion, hyper-parameters,
backbones) are the base that --preset and explicit flags override. Without that file (phase 2 not run) it
starts from the built-in defaults and says so in the log and in every output. Then trains that configuration
with each loss of --losses, each sampler of --samplers ("none": shuffled epochs; "balanced": every class drawn
equally often, with replacement) and each seed, on the same persisted split and cached features.

Reads  <work-dir>/train_cleaned.txt, splits/<split>.csv (phase 0), the feature cache, --best-config
Writes phase3/results/runs/<loss>-<sampler>-s<seed>/ (config, history, metrics, val predictions, checkpoint/
       with loss.safetensors for a loss with state (ACB's running difficulty), figures/);
       phase3/results/runs.csv (one row per run), summary.csv, summary.md, summary.json (one row per loss x
       sampler: mean and std over seeds of accuracy, weighted F1, macro F1, neutral F1, ECE; the configuration
       phase 3 started from; each loss against ce on neutral F1);
       phase3/results/best/ (a copy of the best run: the loss x sampler with the best mean --select-metric, and
       within it the best seed; phase 4 starts from best/checkpoint) and best.json naming it;
       phase3/figures/losses.png (weighted and neutral F1, std error bars), reliability.png (one reliability
       diagram per loss x sampler, validation predictions of all seeds pooled), confusion.png (confusion
       matrices summed over seeds)
"""

from __future__ import annotations

import inspect
import logging
import math
import sys
import time
from pathlib import Path

from msa import cli, stamp
from msa.metrics import pm

log = logging.getLogger("phase3")
PHASE_DIR = Path(__file__).resolve().parent
DEFAULT_BEST_CONFIG = PHASE_DIR.parent / "phase2" / "results" / "best_config.json"
METRICS = ("accuracy", "weighted_f1", "macro_f1", "f1_neutral", "ece", "best_epoch", "seconds")
TABLE_METRICS = (("accuracy", "accuracy"), ("weighted_f1", "weighted F1"), ("macro_f1", "macro F1"),
                 ("f1_neutral", "neutral F1"), ("ece", "ECE"))
SELECT_METRICS = ("weighted_f1", "macro_f1", "f1_neutral", "accuracy")
DEFAULT_SAMPLERS = "none,balanced"


def _default(loss: str, keyword: str):
    """A loss constructor's own default, so that --help and the flags follow msa/losses.py."""
    from msa.losses import LOSSES

    return inspect.signature(LOSSES[loss]).parameters[keyword].default


def build_parser() -> cli.ArgumentParser:
    from msa.losses import LOSSES
    from msa.settings import add_model_args, add_training_args

    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0] + "\n\n" + "\n\n".join(__doc__.split("\n\n")[1:]))
    cli.add_data_args(p)
    g = p.add_argument_group("phase 3 grid")
    g.add_argument("--best-config", type=Path, default=DEFAULT_BEST_CONFIG,
                   help="phase 2's best_config.json; its 'settings' are the starting configuration (missing: "
                        "the built-in defaults, with a warning)")
    g.add_argument("--losses", default=",".join(LOSSES),
                   help=f"comma-separated losses to compare, from {', '.join(LOSSES)}")
    g.add_argument("--samplers", default=DEFAULT_SAMPLERS,
                   help="comma-separated samplers: 'none' (shuffled epochs) and/or 'balanced' (class-balanced "
                        "sampling with replacement)")
    g.add_argument("--select-metric", default="weighted_f1", choices=SELECT_METRICS,
                   help="validation metric that picks the best loss x sampler (mean over seeds) and, within it, "
                        "the seed copied to results/best/")
    add_model_args(p, fusion=True, loss=False)
    add_training_args(p, seeds="42,43,44")

    w = p.add_argument_group("weighted_ce and class weights")
    w.add_argument("--wce-weights", default=_default("weighted_ce", "weights"),
                   choices=["inverse", "effective_number"],
                   help="weighted_ce class weights: inverse frequency (1/n_c)^weight_power, or Cui et al.'s "
                        "effective number (1 - cb_beta) / (1 - cb_beta^n_c); both normalised to mean 1")
    w.add_argument("--weight-power", type=cli.non_negative_float, default=_default("weighted_ce", "weight_power"),
                   help="exponent of inverse-frequency weights (weighted_ce, focal --focal-alpha counts, acb "
                        "--acb-class-balance inverse); 0.5 = square root")
    w.add_argument("--cb-beta", type=float, default=_default("weighted_ce", "cb_beta"),
                   help="beta of effective-number weights (weighted_ce, acb --acb-class-balance effective_number)")
    f = p.add_argument_group("focal")
    f.add_argument("--focal-gamma", type=cli.non_negative_float, default=_default("focal", "gamma"),
                   help="focusing exponent gamma of (1 - p_t)^gamma")
    f.add_argument("--focal-alpha", default="none", choices=["none", "counts"],
                   help="focal class weights: none, or inverse-frequency weights from the training counts")
    a = p.add_argument_group("acb (adaptive class-balanced loss, docs/phase3.md)",
                             "  L = alpha * mean(w_c (1 - p_t)^g_c CE) + beta * mean(exp(-k (p1 - p2)))\n"
                             "  w_c = 1 + a log(1 + d_c),  g_c = b + c log(1 + d_c),\n"
                             "  d_c = running mean of 1 - p_t over class c, p1 >= p2 the top two probabilities")
    a.add_argument("--acb-a", type=float, default=_default("acb", "a"), help="a of the class weight w_c")
    a.add_argument("--acb-b", type=float, default=_default("acb", "b"), help="b, the base focal exponent of g_c")
    a.add_argument("--acb-c", type=float, default=_default("acb", "c"), help="c, the adaptive part of g_c")
    a.add_argument("--acb-k", type=float, default=_default("acb", "k"), help="k of the boundary term")
    a.add_argument("--acb-alpha", type=float, default=_default("acb", "alpha"), help="weight of the focal term")
    a.add_argument("--acb-beta", type=float, default=_default("acb", "beta"),
                   help="weight of the boundary term (0 = none)")
    a.add_argument("--acb-momentum", type=cli.fraction, default=_default("acb", "momentum"),
                   help="momentum of the running difficulty d_c (0 = the per-batch statistic of the report)")
    a.add_argument("--acb-class-balance", default="none", choices=["none", "inverse", "effective_number"],
                   help="also multiply w_c by count-based weights (--weight-power / --cb-beta)")

    o = p.add_argument_group("execution and output")
    o.add_argument("--jobs", type=cli.positive_int, default=2,
                   help="training processes in parallel (one torch thread each); 1 = in this process")
    o.add_argument("--cache-dir", type=Path, default=cli.CACHE_ROOT / "features", help="feature cache folder")
    o.add_argument("--feature-batch-size", type=cli.positive_int, default=32, help="batch size of the frozen backbones")
    o.add_argument("--reliability-bins", type=cli.positive_int, default=15,
                   help="equal-width confidence bins of the reliability diagrams (the ECE uses 15)")
    o.add_argument("--results-dir", type=Path, default=PHASE_DIR / "results", help="where tables and runs go")
    o.add_argument("--figures-dir", type=Path, default=PHASE_DIR / "figures", help="where the figures go")
    stamp.add_force_arg(o)
    o.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


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
              f"(best mean {select_metric}) is in bold.", "",
              "| loss | sampler | " + " | ".join(n for _, n in TABLE_METRICS) + " | best epoch | s/run |",
              "|---|---|" + "---:|" * (len(TABLE_METRICS) + 2)]
    for method, r in table.iterrows():
        cells = [pm(r, k) for k, _ in TABLE_METRICS]
        name = f"**{r['loss']}**" if method == best["method"] else r["loss"]
        lines.append(f"| {name} | {r['sampler']} | " + " | ".join(cells)
                     + f" | {r['best_epoch_mean']:.1f} | {r['seconds_mean']:.1f} |")
    if comparisons:
        lines += ["", "Neutral F1 against ce with the same sampler (difference of means ± its standard error; "
                  "Welch's t-test; seeds where the loss beat ce with the same seed):", "",
                  "| loss-sampler | vs | Δ neutral F1 | Welch p | seed wins | beyond noise (|Δ| > 2 SE) |",
                  "|---|---|---:|---:|---:|---|"]
        for c in comparisons:
            lines.append(f"| {c['method']} | {c['reference']} | {c['difference']:+.4f} ± {c['se']:.4f} | "
                         f"{c['welch_p']:.3f} | {c['paired_wins']}/{c['paired_n']} | "
                         f"{'yes' if c['beyond_noise'] else 'no'} |")
    lines += ["", f"Best run: `{best['method']}` seed {best['seed']} ({select_metric} {best['value']:.4f}) "
              f"-> `{best['copied_to']}`."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    import numpy as np
    import pandas as pd

    from msa.checkpoint import copy_run_dir
    from msa.data import LABELS
    from msa.experiment import RunSpec, labelled_features, load_backbones, load_labelled, run_grid, token_modalities
    from msa.io import write_csv, write_json, write_text
    from msa.losses import LOSSES, build_loss
    from msa.plots import confusion_grid, metric_panels, reliability_diagrams
    from msa.settings import parse_seeds, resolve
    from msa.trainer import SAMPLERS

    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)
    t0 = time.time()
    losses = cli.parse_list(args.losses, list(LOSSES), "--losses")
    samplers = cli.parse_list(args.samplers, list(SAMPLERS), "--samplers")
    seeds = parse_seeds(args.seeds)
    stamp_path = args.results_dir / "inputs.json"
    inputs = stamp.inputs_of(args, files=stamp.phase0_files(cli.work_dir(args), args.split)
                             + [Path(args.best_config)] + ([Path(args.preset)] if args.preset else []),
                             code=[Path(__file__)])
    if stamp.check(stamp_path, inputs, args.force, "phase 3"):
        print(f"phase 3: up to date ({args.results_dir}); --force recomputes")
        return 0
    base, start = load_start_config(args.best_config)
    s = resolve(args, base=base)
    data = load_labelled(cli.work_dir(args), args.split)
    if start.get("split") not in (None, data.split.name) or start.get("split_sha256") not in (None, data.split.sha256):
        log.warning("phase 2 chose its configuration on split %r (sha256 %s), phase 3 trains on %r (sha256 %s)",
                    start.get("split"), str(start.get("split_sha256"))[:12], data.split.name, data.split.sha256[:12])
    kws = loss_keywords(args)
    counts = np.bincount(data.labels[data.train_idx], minlength=len(LABELS)).tolist()
    for loss in losses:  # bad constants are one error before any training
        build_loss(loss, class_counts=counts, **kws[loss])
    log.info("starting configuration: %s; fusion %s; %d loss(es) x %d sampler(s) x %d seed(s)", start["source"],
             s["feature_fusion"], len(losses), len(samplers), len(seeds))

    tb, ib = load_backbones(s["text_backbone"], s["image_backbone"], s["text_pooling"])
    fs = labelled_features(Path(args.data_root) / "data", data.guids, tb, ib, args.cache_dir,
                           token_modalities(s["feature_fusion"]), args.feature_batch_size, side=s["side_features"])
    record = cli.args_record(args)
    record |= {"resolved": s, "started_from": start}
    methods = [(loss, sampler) for loss in losses for sampler in samplers]
    specs = [RunSpec(args.results_dir / "runs" / f"{loss}-{sampler}-s{seed}",
                     {**s, "loss_type": loss, "sampler": sampler}, seed, loss_kw=kws[loss], light=False,
                     tag=f"{loss}-{sampler}", mixed_precision=args.mixed_precision, resume=args.resume)
             for loss, sampler in methods for seed in seeds]
    results = run_grid(specs, fs, data, jobs=args.jobs, record=record, desc="phase 3 loss x sampler x seed")
    grid_seconds = time.time() - t0

    runs = pd.DataFrame([{"loss": sp.settings["loss_type"], "sampler": sp.settings["sampler"], **r}
                         for sp, r in zip(specs, results)])
    runs = runs.drop(columns=[c for c in ("confusion_matrix", "labels", "tag") if c in runs])
    write_csv(args.results_dir / "runs.csv", runs)
    table = summarise(runs, methods)
    write_csv(args.results_dir / "summary.csv", table.reset_index())

    # the best loss x sampler by its mean, then its best seed; phase 4 starts from that checkpoint
    metric = args.select_metric
    best_method = str(table[f"{metric}_mean"].idxmax())
    cand = runs[(runs["loss"] == table.loc[best_method, "loss"]) & (runs["sampler"] == table.loc[best_method,
                                                                                                  "sampler"])]
    best_row = cand.loc[cand[metric].idxmax()]
    best_dir = copy_run_dir(Path(best_row["run_dir"]), args.results_dir / "best")
    best = {"method": best_method, "loss": str(best_row["loss"]), "sampler": str(best_row["sampler"]),
            "seed": int(best_row["seed"]), "select_metric": metric, "value": float(best_row[metric]),
            "selected_by": f"best mean validation {metric} over seeds {seeds} among {len(methods)} loss x sampler "
                           f"combinations, then the best seed", "run_dir": str(best_row["run_dir"]),
            "copied_to": str(best_dir), "checkpoint": str(best_dir / "checkpoint"),
            "metrics": {k: float(best_row[k]) for k in METRICS},
            "method_mean": {k: {"mean": float(table.loc[best_method, f"{k}_mean"]),
                                "std": float(table.loc[best_method, f"{k}_std"])} for k in METRICS},
            "loss_kw": kws[str(best_row["loss"])], "settings": {**s, "loss_type": str(best_row["loss"]),
                                                                 "sampler": str(best_row["sampler"])},
            "split": data.split.name, "split_sha256": data.split.sha256, "started_from": start, "seeds": seeds,
            "seed_runs": [str(p) for p in cand["run_dir"]]}
    write_json(args.results_dir / "best.json", best)

    comparisons = compare_with_ce(runs, table)
    header = (f"# Phase 3: losses x samplers (split `{data.split.name}`, {len(data.val_idx)} validation posts, "
              f"seeds {', '.join(map(str, seeds))}, {len(specs)} runs in {grid_seconds:.0f} s)")
    md = markdown(table, comparisons, start, s, best, header, metric)
    write_text(args.results_dir / "summary.md", md)
    write_json(args.results_dir / "summary.json",
               {"started_from": start, "settings": s, "loss_kw": {k: kws[k] for k in losses}, "seeds": seeds,
                "split": data.split.name, "split_sha256": data.split.sha256, "select_metric": metric,
                "table": table.reset_index().to_dict(orient="records"), "vs_ce": comparisons, "best": best,
                "seconds": round(grid_seconds, 1)})

    # figures: bars, reliability diagrams (seeds pooled), confusion matrices (seeds summed)
    metric_panels(table, "loss", "sampler", [("weighted_f1", "weighted F1"), ("f1_neutral", "neutral F1")],
                  args.figures_dir / "losses.png", title=f"Phase 3: losses and samplers on the validation split "
                  f"(mean ± std over {len(seeds)} seed(s))", ylim=(0, 1))
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
    reliability_diagrams(panels, args.figures_dir / "reliability.png", n_bins=args.reliability_bins,
                         ncols=len(samplers), title=f"Reliability on the validation split ({len(seeds)} seed(s) "
                         "pooled)")
    confusion_grid(matrices, LABELS, args.figures_dir / "confusion.png", ncols=len(samplers),
                   title=f"Validation confusion matrices, {len(seeds)} seed(s) summed (row % = recall)")

    stamp.write(stamp_path, inputs, [args.results_dir / "best.json", args.results_dir / "summary.md",
                                     best_dir / "checkpoint" / "model.safetensors"])
    print(md)
    print(f"best: {best_method} seed {best['seed']} ({metric} {best['value']:.4f}) -> {best_dir} "
          f"(phase 4 starts from its checkpoint); tables -> {args.results_dir}, figures -> {args.figures_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
