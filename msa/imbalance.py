"""The class-imbalance stage (phase 3): where it starts (phase 2's best_config.json), the loss x sampler x seed
grid, the summary table, each loss against cross-entropy with its standard error, the selection of the best run
(copied to best/, named by best.json), its figures, and :func:`run`, the whole phase on the parsed flags.
``phase3/run_phase3.py`` is the front end (the parser, the up-to-date check, printing).

* :func:`add_loss_args`: the flags of the losses' constants;
* :func:`load_start_config`, :func:`warn_if_other_split`, :func:`loss_keywords`, :func:`check_losses`: the starting
  configuration and the losses;
* :func:`grid_features`, :func:`grid_specs`, :func:`runs_frame`: the features, the runs and their table;
* :func:`summarise`, :func:`compare_with_ce`, :func:`select_best`, :func:`header`, :func:`markdown`,
  :func:`summary_json`: what is written;
* :func:`figure_data`, :func:`write_figures`: pooled validation predictions, the reliability diagrams and
  confusion matrices.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import math
import time
from pathlib import Path

from msa import cli
from msa.metrics import pm

log = logging.getLogger("phase3")  # the stage's messages keep the name they have always had
METRICS = ("accuracy", "weighted_f1", "macro_f1", "f1_neutral", "ece", "best_epoch", "seconds")
TABLE_METRICS = (("accuracy", "accuracy"), ("weighted_f1", "weighted F1"), ("macro_f1", "macro F1"),
                 ("f1_neutral", "neutral F1"), ("ece", "ECE"))
SELECT_METRICS = ("weighted_f1", "macro_f1", "f1_neutral", "accuracy")
DEFAULT_SAMPLERS = "none,balanced"
#: weighted_ce's class weights (``--wce-weights``)
WCE_WEIGHTS = ("inverse", "effective_number")
#: focal's class weights (``--focal-alpha``)
FOCAL_ALPHAS = ("none", "counts")
#: the count-based weights ACB may multiply its class weight by (``--acb-class-balance``)
ACB_CLASS_BALANCES = ("none", *WCE_WEIGHTS)


# ----------------------------------------------------------------------------------------------- flags
def loss_default(loss: str, keyword: str):
    """A loss constructor's own default, so that --help and the flags follow msa/losses.py."""
    from msa.losses import LOSSES

    return inspect.signature(LOSSES[loss]).parameters[keyword].default


#: the loss constants' flags: dest -> (loss, constructor keyword); the defaults are the constructors' own
LOSS_FLAGS = {"wce_weights": ("weighted_ce", "weights"), "weight_power": ("weighted_ce", "weight_power"),
              "cb_beta": ("weighted_ce", "cb_beta"), "focal_gamma": ("focal", "gamma"), "acb_a": ("acb", "a"),
              "acb_b": ("acb", "b"), "acb_c": ("acb", "c"), "acb_k": ("acb", "k"), "acb_alpha": ("acb", "alpha"),
              "acb_beta": ("acb", "beta"), "acb_momentum": ("acb", "momentum")}


def _with_default(text: str, dest: str):
    """--help's text of a loss constant, its default read from the constructor (torch) only when shown."""
    return lambda: f"{text} (default: {loss_default(*LOSS_FLAGS[dest])})"


def fill_loss_defaults(args) -> None:
    """The loss constants not given on the command line, set to the constructors' defaults (after the up-to-date
    check: the flags are parsed without importing the losses, and an absent flag is absent from the stamp)."""
    for dest, (loss, keyword) in LOSS_FLAGS.items():
        if not hasattr(args, dest):
            setattr(args, dest, loss_default(loss, keyword))


def add_loss_args(p) -> None:
    """The constants of weighted_ce, focal and acb (their defaults are the loss constructors' own, filled in by
    :func:`fill_loss_defaults`)."""
    def flag(group, name: str, text: str, **kw):
        dest = name[2:].replace("-", "_")
        group.add_argument(name, default=argparse.SUPPRESS, help=_with_default(text, dest), **kw)

    w = p.add_argument_group("weighted_ce and class weights")
    flag(w, "--wce-weights", "weighted_ce class weights: inverse frequency (1/n_c)^weight_power, or Cui et al.'s "
         "effective number (1 - cb_beta) / (1 - cb_beta^n_c); both normalised to mean 1", choices=list(WCE_WEIGHTS))
    flag(w, "--weight-power", "exponent of inverse-frequency weights (weighted_ce, focal --focal-alpha counts, acb "
         "--acb-class-balance inverse); 0.5 = square root", type=cli.non_negative_float)
    flag(w, "--cb-beta", "beta of effective-number weights (weighted_ce, acb --acb-class-balance effective_number)",
         type=float)
    f = p.add_argument_group("focal")
    flag(f, "--focal-gamma", "focusing exponent gamma of (1 - p_t)^gamma", type=cli.non_negative_float)
    f.add_argument("--focal-alpha", default="none", choices=list(FOCAL_ALPHAS),
                   help="focal class weights: none, or inverse-frequency weights from the training counts")
    a = p.add_argument_group("acb (adaptive class-balanced loss, docs/phase3.md)",
                             "  L = alpha * mean(w_c (1 - p_t)^g_c CE) + beta * mean(exp(-k (p1 - p2)))\n"
                             "  w_c = 1 + a log(1 + d_c),  g_c = b + c log(1 + d_c),\n"
                             "  d_c = running mean of 1 - p_t over class c, p1 >= p2 the top two probabilities")
    flag(a, "--acb-a", "a of the class weight w_c", type=float)
    flag(a, "--acb-b", "b, the base focal exponent of g_c", type=float)
    flag(a, "--acb-c", "c, the adaptive part of g_c", type=float)
    flag(a, "--acb-k", "k of the boundary term", type=float)
    flag(a, "--acb-alpha", "weight of the focal term", type=float)
    flag(a, "--acb-beta", "weight of the boundary term (0 = none)", type=float)
    flag(a, "--acb-momentum", "momentum of the running difficulty d_c (0 = the per-batch statistic of the report)",
         type=cli.fraction)
    a.add_argument("--acb-class-balance", default="none", choices=list(ACB_CLASS_BALANCES),
                   help="also multiply w_c by count-based weights (--weight-power / --cb-beta)")


# ----------------------------------------------------------------------------------------------- the phase
def run(args, losses: list[str], samplers: list[str], seeds: list[int], t0: float) -> tuple[str, dict]:
    """Phase 3 on the parsed flags of ``phase3/run_phase3.py``: the grid's runs, runs.csv, the summary files,
    best/ + best.json and the figures. Returns ``(summary.md text, best.json record)``."""
    from msa.experiment import load_labelled, run_grid
    from msa.io import write_csv, write_json, write_text
    from msa.records import write_best
    from msa.settings import resolve

    fill_loss_defaults(args)
    base, start = load_start_config(args.best_config)
    s = resolve(args, base=base)
    data = load_labelled(cli.work_dir(args), args.split)
    warn_if_other_split(start, data)
    kws = loss_keywords(args)
    check_losses(losses, kws, data)
    log.info("starting configuration: %s; fusion %s; %d loss(es) x %d sampler(s) x %d seed(s)",
             start["source"], s["feature_fusion"], len(losses), len(samplers), len(seeds))

    from msa.workers import prestart

    prestart(args.jobs)  # the workers' fork server imports meanwhile (msa.workers)
    fs = grid_features(s, data, Path(args.data_root) / "data", args.cache_dir, args.feature_batch_size)
    record = cli.args_record(args) | {"resolved": s, "started_from": start}
    methods = [(loss, sampler) for loss in losses for sampler in samplers]
    specs = grid_specs(s, methods, seeds, kws, args.results_dir / "runs", args.mixed_precision, args.resume)
    results = run_grid(specs, fs, data, jobs=args.jobs, record=record, desc="phase 3 loss x sampler x seed")
    grid_seconds = time.time() - t0

    runs = runs_frame(specs, results)
    write_csv(args.results_dir / "runs.csv", runs)
    table = summarise(runs, methods)
    write_csv(args.results_dir / "summary.csv", table.reset_index())
    ctx = {"settings": s, "loss_kw": kws, "data": data, "start": start, "seeds": seeds, "n_methods": len(methods)}
    best = select_best(runs, table, args.select_metric, args.results_dir, ctx)
    write_best(args.results_dir, best)
    comparisons = compare_with_ce(runs, table)
    md = markdown(table, comparisons, start, s, best, header(data, seeds, len(specs), grid_seconds),
                  args.select_metric)
    write_text(args.results_dir / "summary.md", md)
    write_json(args.results_dir / "summary.json",
               summary_json(table, comparisons, best, ctx, losses, args.select_metric, grid_seconds))
    write_figures(table, methods, specs, len(seeds), len(samplers), args)
    return md, best


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

    tb, ib = load_backbones(s["text_backbone"], s["image_backbone"], s["text_pooling"], cache_dir)
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


def select_best(runs, table, metric: str, results_dir: Path, ctx: dict):
    """The best loss x sampler by its mean ``metric``, then its best seed, copied to ``results_dir``/best (phase 4
    starts from that checkpoint); returns the best.json record (:class:`msa.records.BestRecord`). ``ctx``:
    settings, loss_kw, data, start, seeds, n_methods."""
    from msa.records import select_best as best_of

    s, kws = ctx["settings"], ctx["loss_kw"]
    method = str(table[f"{metric}_mean"].idxmax())
    loss, sampler = str(table.loc[method, "loss"]), str(table.loc[method, "sampler"])
    cand = runs[(runs["loss"] == loss) & (runs["sampler"] == sampler)]
    return best_of(method, cand, table, metric, results_dir, METRICS,
                   selected_by=f"best mean validation {metric} over seeds {ctx['seeds']} among {ctx['n_methods']} "
                               "loss x sampler combinations, then the best seed",
                   settings=s.replace(loss_type=loss, sampler=sampler), loss_kw=kws[loss], data=ctx["data"],
                   seeds=ctx["seeds"], extra={"loss": loss, "sampler": sampler, "started_from": ctx["start"]})


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


def write_figures(table, methods: list[tuple[str, str]], specs: list, n_seeds: int, n_samplers: int, args) -> None:
    """phase3/figures/losses.png (bars), reliability.png (seeds pooled), confusion.png (seeds summed)."""
    from msa.data import LABELS
    from msa.plots import confusion_grid, metric_panels, reliability_diagrams

    metric_panels(table, "loss", "sampler", [("weighted_f1", "weighted F1"), ("f1_neutral", "neutral F1")],
                  args.figures_dir / "losses.png", title=f"Phase 3: losses and samplers on the validation split "
                  f"(mean ± std over {n_seeds} seed(s))", ylim=(0, 1))
    panels, matrices = figure_data(table, methods, specs)
    reliability_diagrams(panels, args.figures_dir / "reliability.png", n_bins=args.reliability_bins,
                         ncols=n_samplers, title=f"Reliability on the validation split ({n_seeds} seed(s) pooled)")
    confusion_grid(matrices, LABELS, args.figures_dir / "confusion.png", ncols=n_samplers,
                   title=f"Validation confusion matrices, {n_seeds} seed(s) summed (row % = recall)")
