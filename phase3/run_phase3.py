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
import sys
import time
from pathlib import Path

from msa import cli, stamp
from msa.imbalance import DEFAULT_SAMPLERS, SELECT_METRICS

PHASE_DIR = Path(__file__).resolve().parent
DEFAULT_BEST_CONFIG = PHASE_DIR.parent / "phase2" / "results" / "best_config.json"


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
    add_loss_args(p)

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


def add_loss_args(p: cli.ArgumentParser) -> None:
    """The constants of weighted_ce, focal and acb (their defaults are the loss constructors' own)."""
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


# ----------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    from msa import imbalance as stage
    from msa.experiment import load_labelled, run_grid
    from msa.io import write_csv, write_json, write_text
    from msa.losses import LOSSES
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
    base, start = stage.load_start_config(args.best_config)
    s = resolve(args, base=base)
    data = load_labelled(cli.work_dir(args), args.split)
    stage.warn_if_other_split(start, data)
    kws = stage.loss_keywords(args)
    stage.check_losses(losses, kws, data)
    stage.log.info("starting configuration: %s; fusion %s; %d loss(es) x %d sampler(s) x %d seed(s)",
                   start["source"], s["feature_fusion"], len(losses), len(samplers), len(seeds))

    fs = stage.grid_features(s, data, Path(args.data_root) / "data", args.cache_dir, args.feature_batch_size)
    record = cli.args_record(args) | {"resolved": s, "started_from": start}
    methods = [(loss, sampler) for loss in losses for sampler in samplers]
    specs = stage.grid_specs(s, methods, seeds, kws, args.results_dir / "runs", args.mixed_precision, args.resume)
    results = run_grid(specs, fs, data, jobs=args.jobs, record=record, desc="phase 3 loss x sampler x seed")
    grid_seconds = time.time() - t0

    runs = stage.runs_frame(specs, results)
    write_csv(args.results_dir / "runs.csv", runs)
    table = stage.summarise(runs, methods)
    write_csv(args.results_dir / "summary.csv", table.reset_index())
    ctx = {"settings": s, "loss_kw": kws, "data": data, "start": start, "seeds": seeds, "n_methods": len(methods)}
    best = stage.select_best(runs, table, args.select_metric, args.results_dir, ctx)
    write_json(args.results_dir / "best.json", best)
    comparisons = stage.compare_with_ce(runs, table)
    md = stage.markdown(table, comparisons, start, s, best, stage.header(data, seeds, len(specs), grid_seconds),
                        args.select_metric)
    write_text(args.results_dir / "summary.md", md)
    write_json(args.results_dir / "summary.json",
               stage.summary_json(table, comparisons, best, ctx, losses, args.select_metric, grid_seconds))

    write_figures(table, methods, specs, len(seeds), len(samplers), args)
    best_dir = Path(best["copied_to"])
    stamp.write(stamp_path, inputs, [args.results_dir / "best.json", args.results_dir / "summary.md",
                                     best_dir / "checkpoint" / "model.safetensors"])
    print(md)
    print(f"best: {best['method']} seed {best['seed']} ({args.select_metric} {best['value']:.4f}) -> {best_dir} "
          f"(phase 4 starts from its checkpoint); tables -> {args.results_dir}, figures -> {args.figures_dir}")
    return 0


def write_figures(table, methods: list[tuple[str, str]], specs: list, n_seeds: int, n_samplers: int, args) -> None:
    """phase3/figures/losses.png (bars), reliability.png (seeds pooled), confusion.png (seeds summed)."""
    from msa import imbalance as stage
    from msa.data import LABELS
    from msa.plots import confusion_grid, metric_panels, reliability_diagrams

    metric_panels(table, "loss", "sampler", [("weighted_f1", "weighted F1"), ("f1_neutral", "neutral F1")],
                  args.figures_dir / "losses.png", title=f"Phase 3: losses and samplers on the validation split "
                  f"(mean ± std over {n_seeds} seed(s))", ylim=(0, 1))
    panels, matrices = stage.figure_data(table, methods, specs)
    reliability_diagrams(panels, args.figures_dir / "reliability.png", n_bins=args.reliability_bins,
                         ncols=n_samplers, title=f"Reliability on the validation split ({n_seeds} seed(s) pooled)")
    confusion_grid(matrices, LABELS, args.figures_dir / "confusion.png", ncols=n_samplers,
                   title=f"Validation confusion matrices, {n_seeds} seed(s) summed (row % = recall)")


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
