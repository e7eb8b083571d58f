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

import sys
import time
from pathlib import Path

from msa import cli, stamp
from msa.config import add_output_dirs
from msa.recipe import BIAS_METRICS, DECISIONS, VARIANTS

FINAL_DIR = Path(__file__).resolve().parent
DEFAULT_PRESET = FINAL_DIR.parent / "configs" / "final.json"


def _tta_choices() -> list[str]:
    from msa.features import IMAGE_VIEWS

    return ["none", *IMAGE_VIEWS]


def build_parser() -> cli.ArgumentParser:
    from msa.config import LazyChoices
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
    r.add_argument("--decision", default="argmax", choices=list(DECISIONS),
                   help="bias: offsets of the neutral and negative log-probabilities chosen on inner validation; "
                        "argmax: none")
    r.add_argument("--bias-metric", default="weighted_f1", choices=list(BIAS_METRICS),
                   help="what the decision offsets maximise on inner validation")
    r.add_argument("--focal-gamma", type=cli.non_negative_float, default=2.0,
                   help="focusing exponent of the focal loss")
    r.add_argument("--tta", default="none", choices=LazyChoices(_tta_choices), metavar="VIEW",
                   help="test-time augmentation, one of %(choices)s: every model's probabilities are averaged over "
                        "the image and this view of it (hflip: mirrored left-right); none: the image only")
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
    o.add_argument("--test-file", default="auto", metavar="PATH",
                   help="an unlabelled test index (guid,tag) whose posts' features (and side features) are put into "
                        "the feature cache while the backbones are loaded, in the batches predict_test would use, so "
                        "that predict_test loads no backbone: nothing of it is trained on or evaluated (auto: "
                        "<data-root>/test_without_label.txt when it exists; none: skip)")
    add_output_dirs(o, FINAL_DIR, "where tables, runs, best/ go", "where the figures go")
    stamp.add_force_arg(o)
    o.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv=None) -> int:
    from msa import recipe
    from msa.settings import parse_seeds, resolve

    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)
    t0 = time.time()
    seeds = parse_seeds(args.seeds)
    names = recipe.fold_names(args)
    # the files the stamp hashes follow from the settings; read them without the registries (torch) first
    s = resolve(args, registries=False)
    variants = recipe.choose_variants(s, args)
    side_specs = {s.replace(**ov).side_features or "" for ov, _ in variants.values()}
    stamp_path = args.results_dir / "inputs.json"
    inputs = stamp.inputs_of(args, files=recipe.input_files(args, names, side_specs), code=[Path(__file__)],
                             ignore=("test_file",))  # warms the cache only: no output depends on it
    if stamp.check(stamp_path, inputs, args.force, "final recipe"):
        print(f"final recipe: up to date ({args.results_dir}); --force recomputes")
        return 0
    s = resolve(args)  # now every value checked, the registries' names included
    md, best_dir, bias, n_folds = recipe.run(args, s, variants, side_specs, names, seeds, t0)
    stamp.write(stamp_path, inputs, [args.results_dir / "summary.csv", best_dir / "ensemble.json"])
    print(md)
    print(f"final ensemble ({n_folds * len(seeds)} models, bias {bias}) -> {best_dir} (predict_test.py's default)")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
