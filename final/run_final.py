"""Final recipe: 5-fold cross-validation of the chosen configuration, a seed x fold ensemble and a decision rule for
neutral; reads phase 0's folds and the feature cache, writes final/results/ (tables, the ensemble predict_test uses)
and final/figures/.

Run from the repository root after phase 0 (it does not need phases 1-6):

    python final/run_final.py --data-root dataset/
    python final/run_final.py --data-root ../shared/mvsa --ablation
    python final/run_final.py --data-root ../shared/mvsa --seeds 42,43 --decision argmax --loss-type ce

Honest cross-validation: phase 0's stratified folds (--folds 5 reads splits/cv5-0 .. cv5-4). In each fold the
training part is split again (stratified, --inner-val of it, seeded by the fold) into inner-train and
inner-validation. Every model (one per seed of --seeds) trains on inner-train and early-stops on
inner-validation; the decision rule is chosen on the inner-validation predictions; the fold's held-out posts are
predicted once, at the end. The table reports mean ± std over the folds of those held-out metrics, so no number
is selected on the posts it is measured on (the recipe itself was chosen by looking at these folds: see docs/final.md).

Recipe: the settings of --preset (default configs/final.json: fusion, loss, hyper-parameters), then explicit
flags. The prediction of several models is the mean of their class probabilities (--seeds: a seed ensemble in
every fold). --decision bias adds a log-probability offset to the neutral and negative classes, chosen on
inner-validation data to maximise --bias-metric (a class-prior / threshold adjustment); --decision argmax does not.

The final model is the ensemble of every fold x seed model (each trained on ~72% of the labelled posts) with the
mean of the folds' offsets; it is copied to final/results/best/ (ensemble.json + members/), which
phase4/predict_test.py uses by default.

--tta hflip averages every model's probabilities over the image and its left-right mirror image (test-time
augmentation; the mirrored images' features are cached like the others); predict_test.py does the same for an
ensemble that records it. The defaults (--decision argmax, --tta none) are what the contribution table on
../shared/mvsa supports: neither the offsets nor the mirrored view raised the cross-validated weighted F1
(docs/final.md).

--ablation also trains the variants of the contribution table (loss ce or weighted ce instead of the recipe's,
concat fusion, token-level cross-attention fusion) on the same folds and seeds; the rows with or without the seed
ensemble, the decision rule and the test-time augmentation come from the recipe's own models at no cost.

Reads  <work-dir>/train_cleaned.txt, splits/cv<K>-<k>.csv (phase 0), --preset, the feature cache
Writes final/results/runs/<variant>/fold<k>-s<seed>/ (run folders), predictions.csv (held-out probabilities of
       every fold and row), folds.csv (metrics per fold and row), summary.csv/.md/.json (mean ± std over folds;
       the contribution table), best/ (the ensemble); final/figures/contributions.png, confusion.png
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from msa import cli, stamp
from msa.recipe import VARIANTS

log = logging.getLogger("final")
FINAL_DIR = Path(__file__).resolve().parent
DEFAULT_PRESET = FINAL_DIR.parent / "configs" / "final.json"

def build_parser() -> cli.ArgumentParser:
    from msa.settings import add_model_args, add_resume_arg, add_training_args

    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0] + "\n\n" + "\n\n".join(__doc__.split("\n\n")[1:]))
    cli.add_data_args(p)
    add_model_args(p)
    add_training_args(p, seeds="42,43,44", resume=False)
    p.set_defaults(preset=str(DEFAULT_PRESET))
    r = p.add_argument_group("cross-validation, ensemble, decision rule")
    r.add_argument("--folds", type=cli.positive_int, default=5,
                   help="number of phase 0's folds (splits cv<K>-0 .. cv<K>-<K-1>)")
    r.add_argument("--inner-val", type=cli.open_fraction, default=0.1,
                   help="share of each fold's training part kept for early stopping and the decision rule")
    r.add_argument("--decision", default="argmax", choices=["bias", "argmax"],
                   help="bias: offsets of the neutral and negative log-probabilities chosen on inner validation; "
                        "argmax: none")
    r.add_argument("--bias-metric", default="weighted_f1", choices=["weighted_f1", "macro_f1", "accuracy"],
                   help="what the decision offsets maximise on inner validation")
    r.add_argument("--focal-gamma", type=cli.non_negative_float, default=2.0,
                   help="focusing exponent of the focal loss")
    r.add_argument("--tta", default="none", choices=["none", "hflip"],
                   help="test-time augmentation: every model's probabilities are averaged over the image and this "
                        "view of it (hflip: mirrored left-right); none: the image only")
    r.add_argument("--ablation", action="store_true",
                   help=f"also train the variants {', '.join(VARIANTS)} and the side-feature row (side: + "
                        "--ablation-side for a recipe without side features; no_side: without the recipe's) for "
                        "the contribution table")
    r.add_argument("--variants", default=None, metavar="LIST",
                   help="with --ablation, only these variants (comma-separated, from "
                        f"{', '.join((*VARIANTS, 'side'))}; default all)")
    r.add_argument("--ablation-side", default="vader,text_stats,image_stats", metavar="LIST",
                   help="the side features the 'side' row of --ablation adds (msa.side)")
    add_resume_arg(r)
    o = p.add_argument_group("execution and output")
    o.add_argument("--jobs", type=cli.positive_int, default=2,
                   help="training processes in parallel (one torch thread each)")
    o.add_argument("--cache-dir", type=Path, default=cli.CACHE_ROOT / "features", help="feature cache folder")
    o.add_argument("--feature-batch-size", type=cli.positive_int, default=32, help="batch size of the frozen backbones")
    o.add_argument("--results-dir", type=Path, default=FINAL_DIR / "results", help="where tables, runs, best/ go")
    o.add_argument("--figures-dir", type=Path, default=FINAL_DIR / "figures", help="where the figures go")
    stamp.add_force_arg(o)
    o.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p



def main(argv=None) -> int:
    from msa import recipe
    from msa import side as side_mod
    from msa.io import write_csv, write_json, write_text
    from msa.settings import parse_seeds, resolve
    from msa.splits import split_path

    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)
    t0 = time.time()
    seeds = parse_seeds(args.seeds)
    if args.folds < 2 or not 0.0 < args.inner_val < 0.5:
        raise cli.UserError("--folds must be >= 2, --inner-val in (0, 0.5)")
    work = cli.work_dir(args)
    names = [f"cv{args.folds}-{k}" for k in range(args.folds)]
    missing = [n for n in names if not split_path(work, n).is_file()]
    if missing:
        raise cli.UserError(f"split(s) {', '.join(missing)} not found in {work / 'splits'}: run phase 0 with "
                            f"--folds {args.folds} (python phase0/data_cleaner.py --data-root DATA --folds "
                            f"{args.folds} --force)")
    s = resolve(args)
    variants = recipe.choose_variants(s, args)
    side_specs = {(s | ov).get("side_features") or "" for ov, _ in variants.values()}
    stamp_path = args.results_dir / "inputs.json"
    inputs = stamp.inputs_of(args, files=[work / "phase0_manifest.json", work / "train_cleaned.txt",
                                          *(split_path(work, n) for n in names), Path(args.preset),
                                          *(f for spec in sorted(side_specs) for f in side_mod.csv_files(spec))],
                             code=[Path(__file__)])
    if stamp.check(stamp_path, inputs, args.force, "final recipe"):
        print(f"final recipe: up to date ({args.results_dir}); --force recomputes")
        return 0

    folds = recipe.make_folds(work, names, args.inner_val)
    guids = folds[0]["data"].guids
    views, view = recipe.feature_views(s, variants, guids, args)
    results, trained = recipe.run_variants(variants, s, views, side_specs, folds, seeds, args,
                                           cli.args_record(args) | {"resolved": s})
    frame = recipe.write_fold_tables(results, args.results_dir)
    table = recipe.contribution_table(frame, recipe.row_descriptions(s, seeds, args, variants, view))
    write_csv(args.results_dir / "summary.csv", table.reset_index())
    best_dir, bias, fin = recipe.save_final_ensemble(results, trained, folds, seeds, table, s, names, args,
                                                     has_view=len(views) > 1)
    md = recipe.markdown(table, s, seeds, args, len(guids), bias, time.time() - t0)
    write_text(args.results_dir / "summary.md", md)
    write_json(args.results_dir / "summary.json", {"table": table.reset_index().to_dict(orient="records"),
                                                   "recipe": s, "seeds": seeds, "folds": names, "bias": bias,
                                                   "inner_val": args.inner_val, "decision": args.decision,
                                                   "seconds": round(time.time() - t0, 1)})
    write_figures(table, fin, args)
    recipe.write_errors(fin, Path(args.data_root) / "data", args)
    stamp.write(stamp_path, inputs, [args.results_dir / "summary.csv", best_dir / "ensemble.json"])
    print(md)
    print(f"final ensemble ({len(folds) * len(seeds)} models, bias {bias}) -> {best_dir} (predict_test.py's default)")
    return 0


#: the contribution figure's short row names
SHORT = {"final": "final recipe", "final-rule": "− decision rule", "final+rule": "+ decision rule",
         "final-ensemble": "− seed ensemble", "final-tta": "− TTA", "final+tta": "+ TTA",
         "final-single": "single model", "loss_ce": "CE loss", "loss_weighted_ce": "weighted CE",
         "fusion_concat": "concat fusion", "fusion_cross_attention": "cross-attention",
         "side": "+ side features", "no_side": "− side features"}


def write_figures(table, fin: list[dict], args) -> None:
    """final/figures/contributions.png (each row's weighted and neutral F1) and confusion.png (held-out, folds
    summed)."""
    import numpy as np

    from msa.data import LABELS
    from msa.plots import confusion_grid, grouped_bars

    grouped_bars(table[[c for c in table.columns if c.endswith(("_mean", "_std"))]].rename(index=SHORT),
                 [("weighted_f1", "weighted F1"), ("f1_neutral", "neutral F1")],
                 args.figures_dir / "contributions.png", ylim=(0, 1),
                 title=f"Final recipe and its ablations: {args.folds}-fold CV, mean ± std over folds")
    confusion_grid({f"final recipe, {args.folds} folds summed\nneutral F1 "
                    f"{table.loc['final', 'f1_neutral_mean']:.3f}": sum(np.asarray(r["confusion_matrix"])
                                                                          for r in fin)},
                   LABELS, args.figures_dir / "confusion.png", ncols=1, title="Held-out predictions (CV)")


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
