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

import json
import logging
import sys
import time
from pathlib import Path

from msa import cli, stamp

log = logging.getLogger("final")
FINAL_DIR = Path(__file__).resolve().parent
DEFAULT_PRESET = FINAL_DIR.parent / "configs" / "final.json"
METRICS = (("accuracy", "accuracy"), ("weighted_f1", "weighted F1"), ("macro_f1", "macro F1"),
           ("f1_neutral", "neutral F1"))
#: trained variants of --ablation: name -> (settings overrides, description)
VARIANTS = {
    "loss_ce": ({"loss_type": "ce"}, "cross-entropy instead of the recipe's loss"),
    "loss_weighted_ce": ({"loss_type": "weighted_ce"}, "inverse-frequency weighted cross-entropy instead"),
    "fusion_concat": ({"feature_fusion": "concat"}, "concat fusion instead of the recipe's"),
    "fusion_cross_attention": ({"feature_fusion": "cross_attention"}, "token-level cross-attention fusion"),
}
#: the side-feature row of --ablation: ``side`` adds --ablation-side to a recipe without side features,
#: ``no_side`` drops a recipe's own side features
SIDE_VARIANTS = ("side", "no_side")


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


def loss_keywords(loss: str, args) -> dict:
    return {"gamma": args.focal_gamma, "alpha": None} if loss == "focal" else {}


def score_rows(ckpt: Path, views: dict, rows) -> dict:
    """Class probabilities of ``rows`` (in that order) by the checkpoint, for each feature view
    (``{"image": fs, "hflip": fs of the mirrored images}``)."""
    from msa.checkpoint import load_checkpoint
    from msa.trainer import predict_rows

    model, cfg = load_checkpoint(ckpt)
    return {v: predict_rows(model, fs, rows, cfg.get("token_modalities", [])) for v, fs in views.items()}


def train_variant(name: str, settings: dict, loss_kw: dict, fs, folds: list[dict], seeds: list[int], args,
                  record: dict) -> dict:
    """Train one configuration on every fold and seed; returns {fold: {seed: checkpoint dir}}."""
    from msa.experiment import RunSpec, run_grid

    out = {}
    for f in folds:
        specs = [RunSpec(args.results_dir / "runs" / name / f"fold{f['k']}-s{seed}", settings, seed, loss_kw=loss_kw,
                         light=False, tag=name, train_idx=f["inner_train"], val_idx=f["inner_val"],
                         resume=args.resume) for seed in seeds]
        run_grid(specs, fs, f["data"], jobs=args.jobs, record=record, desc=f"final {name}, fold {f['k']} x seed")
        out[f["k"]] = {sp.seed: sp.run_dir / "checkpoint" for sp in specs}
    return out


#: parts of the recipe that its own models can do with or without, at no training cost
PARTS = ("ensemble", "rule", "tta")


def recipe_parts(args) -> set[str]:
    """The parts the recipe uses: the seed ensemble, the decision rule (--decision bias), the test-time view."""
    return {"ensemble"} | ({"rule"} if args.decision == "bias" else set()) | ({"tta"} if args.tta != "none" else set())


def free_rows(args, has_view: bool) -> dict[str, set[str]]:
    """Rows of the contribution table from the recipe's own models: ``final`` (the recipe), ``final-<part>`` /
    ``final+<part>`` (the recipe without / with one part), ``final-single`` (first seed, arg-max, the image
    only: the single model of the earlier phases' protocol)."""
    own = recipe_parts(args)
    rows = {"final": own}
    for part in PARTS:
        if part == "tta" and not has_view:
            continue
        rows[f"final{'-' if part in own else '+'}{part}"] = own ^ {part}
    rows["final-single"] = set()
    seen, out = [], {}
    for row, parts in rows.items():  # a row equal to an earlier one (e.g. -ensemble when that is all) is dropped
        if parts not in seen:
            seen.append(parts)
            out[row] = parts
    return out


def evaluate(name: str, ckpts: dict, views: dict, folds: list[dict], labels, args,
             rows: dict[str, set[str]]) -> list[dict]:
    """Held-out metrics per fold of ``rows`` (row name -> the :data:`PARTS` it uses); the decision rule is
    chosen on inner validation from the same probabilities the row predicts the held-out fold with."""
    import numpy as np

    from msa.data import LABELS
    from msa.ensemble import apply_bias, choose_bias
    from msa.metrics import classification_metrics

    results = []
    for f in folds:
        seeds = list(ckpts[f["k"]])
        inner = {s: score_rows(ckpts[f["k"]][s], views, f["inner_val"]) for s in seeds}
        outer = {s: score_rows(ckpts[f["k"]][s], views, f["val"]) for s in seeds}
        y_in, y_out = labels[f["inner_val"]], labels[f["val"]]
        for row, parts in rows.items():
            use = seeds if "ensemble" in parts else seeds[:1]
            rule = "rule" in parts
            use_views = list(views)[:2] if "tta" in parts else ["image"]
            p_in = np.mean([inner[s][v] for s in use for v in use_views], axis=0)
            p_out = np.mean([outer[s][v] for s in use for v in use_views], axis=0)
            bias = choose_bias(p_in, y_in, args.bias_metric)[0] if rule else [0.0] * len(LABELS)
            p = apply_bias(p_out, bias)
            m = classification_metrics(y_out, p.argmax(1), p, LABELS)
            results.append({"row": row, "variant": name, "fold": f["k"], "members": len(use),
                            "views": len(use_views), "bias": bias,
                            "proba": p, "guids": [views["image"].guids[i] for i in f["val"]], "y": y_out,
                            **{k: m[k] for k in ("accuracy", "weighted_f1", "macro_f1", "f1_neutral",
                                                 "confusion_matrix")}})
    return results


def main(argv=None) -> int:
    import numpy as np
    import pandas as pd

    from msa import side as side_mod
    from msa.data import LABELS
    from msa.ensemble import save_ensemble
    from msa.experiment import Labelled, labelled_features, load_backbones, load_labelled, token_modalities
    from msa.features import extract_features, with_image_view
    from msa.io import write_csv, write_json, write_text
    from msa.plots import confusion_grid, grouped_bars
    from msa.settings import parse_seeds, resolve
    from msa.splits import split_path, stratified_holdout

    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)
    t0 = time.time()
    seeds = parse_seeds(args.seeds)
    if args.folds < 2 or not 0.0 < args.inner_val < 0.5 or args.jobs < 1:
        raise cli.UserError("--folds must be >= 2, --inner-val in (0, 0.5), --jobs >= 1")
    work = cli.work_dir(args)
    names = [f"cv{args.folds}-{k}" for k in range(args.folds)]
    missing = [n for n in names if not split_path(work, n).is_file()]
    if missing:
        raise cli.UserError(f"split(s) {', '.join(missing)} not found in {work / 'splits'}: run phase 0 with "
                            f"--folds {args.folds} (python phase0/data_cleaner.py --data-root DATA --folds "
                            f"{args.folds} --force)")
    s = resolve(args)
    variants = {"final": ({}, "the recipe")}
    if args.ablation:
        side_row = ("no_side", ({"side_features": ""}, f"without the recipe's side features ({s['side_features']})")) \
            if side_mod.parse_spec(s["side_features"]) else \
            ("side", ({"side_features": args.ablation_side}, f"+ numeric side features ({args.ablation_side})"))
        pool = {**VARIANTS, side_row[0]: side_row[1]}
        wanted = [v.strip() for v in (args.variants or ",".join(pool)).split(",") if v.strip()]
        wanted = [side_row[0] if v in SIDE_VARIANTS else v for v in wanted]
        unknown = [v for v in wanted if v not in pool]
        if unknown:
            raise cli.UserError(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(pool)}")
        variants |= {v: pool[v] for v in dict.fromkeys(wanted)}
    elif args.variants:
        raise cli.UserError("--variants needs --ablation")
    from msa.backbones import GROUP_SEP

    grouped = [m for m in ("text_backbone", "image_backbone") if GROUP_SEP in str(s.get(m) or "")]
    for name in [v for v in variants if v != "final"]:
        vs = s | variants[name][0]
        if grouped and token_modalities(vs["feature_fusion"]):
            log.warning("variant %s skipped: fusion %s attends over token sequences, which a backbone group (%s) "
                        "does not have", name, vs["feature_fusion"], ", ".join(str(s[m]) for m in grouped))
            del variants[name]
    side_specs = {(s | ov).get("side_features") or "" for ov, _ in variants.values()}
    stamp_path = args.results_dir / "inputs.json"
    inputs = stamp.inputs_of(args, files=[work / "phase0_manifest.json", work / "train_cleaned.txt",
                                          *(split_path(work, n) for n in names), Path(args.preset),
                                          *(f for spec in sorted(side_specs) for f in side_mod.csv_files(spec))],
                             code=[Path(__file__)])
    if stamp.check(stamp_path, inputs, args.force, "final recipe"):
        print(f"final recipe: up to date ({args.results_dir}); --force recomputes")
        return 0

    folds = []
    for k, n in enumerate(names):
        data = load_labelled(work, n)
        tr = data.train_idx
        inner = stratified_holdout([data.guids[i] for i in tr], [LABELS[data.labels[i]] for i in tr],
                                   args.inner_val, seed=1000 + k)
        side = dict(zip(inner["guid"], inner["split"]))
        inner_train = [i for i in tr if side[data.guids[i]] == "train"]
        inner_val = [i for i in tr if side[data.guids[i]] == "val"]
        folds.append({"k": k, "data": Labelled(data.guids, data.labels, data.split, inner_train, inner_val),
                      "inner_train": inner_train, "inner_val": inner_val, "val": data.val_idx})
    guids, labels = folds[0]["data"].guids, folds[0]["data"].labels
    all_val = sorted(i for f in folds for i in f["val"])
    if all_val != list(range(len(guids))):
        raise cli.UserError(f"the validation parts of {', '.join(names)} do not partition the cleaned index: "
                            "rerun phase 0 with --force")

    fusions = {(s | ov).get("feature_fusion", s["feature_fusion"]) for ov, _ in variants.values()}
    tb, ib = load_backbones(s["text_backbone"], s["image_backbone"], s["text_pooling"])
    token_mods = sorted({m for f in fusions for m in token_modalities(f)})
    fs = labelled_features(Path(args.data_root) / "data", guids, tb, ib, args.cache_dir, token_mods,
                           args.feature_batch_size)
    views = {"image": fs}
    view = args.tta if args.tta != "none" else "hflip"
    if ib is not None and (args.tta != "none" or args.ablation):  # the ablation shows what TTA would add
        views[view] = with_image_view(fs, extract_features(
            guids, Path(args.data_root) / "data", None, ib, args.cache_dir,
            tokens=[m for m in token_mods if m == "image"], batch_size=args.feature_batch_size, image_view=view))
    record = cli.args_record(args) | {"resolved": s}

    # numeric side features (msa.side) of every spec a variant uses; imputation and standardisation are fitted
    # per model on its own inner-training rows (msa.experiment.train_run)
    sides = {spec: side_mod.compute(spec, guids, Path(args.data_root) / "data", args.cache_dir)
             for spec in sorted(side_specs)}

    results, trained = [], {}
    for name, (override, _) in variants.items():
        vs = {**s, **override}
        sm = sides[vs.get("side_features") or ""]
        vviews = {v: side_mod.attach(f, sm) for v, f in views.items()}
        trained[name] = train_variant(name, vs, loss_keywords(vs["loss_type"], args), vviews["image"], folds, seeds,
                                      args, record)
        rows = free_rows(args, len(views) > 1) if name == "final" else {name: recipe_parts(args)}
        results += evaluate(name, trained[name], vviews, folds, labels, args, rows)

    # tables
    frame = pd.DataFrame([{k: v for k, v in r.items() if k not in ("proba", "guids", "y", "confusion_matrix")}
                          for r in results])
    write_csv(args.results_dir / "folds.csv", frame.assign(bias=frame["bias"].map(json.dumps)))
    pred_rows = []
    for r in results:
        block = pd.DataFrame({"row": r["row"], "fold": r["fold"], "guid": r["guids"],
                              "label": [LABELS[k] for k in r["y"]], "pred": [LABELS[k] for k in r["proba"].argmax(1)]})
        for j, lab in enumerate(LABELS):
            block[f"p_{lab}"] = r["proba"][:, j].round(6)
        pred_rows.append(block)
    write_csv(args.results_dir / "predictions.csv", pd.concat(pred_rows, ignore_index=True))
    describe = {"final": "final recipe: " + describe_recipe(s, seeds, args),
                "final-rule": "− decision rule (arg-max)",
                "final+rule": f"+ decision rule (neutral/negative offsets chosen on inner validation, "
                              f"{args.bias_metric})",
                "final-ensemble": f"− seed ensemble (seed {seeds[0]} only)",
                "final-tta": f"− test-time augmentation (the image only, no {view} view)",
                "final+tta": f"+ test-time augmentation (mean over the image and its {view} view)",
                "final-single": f"single model: seed {seeds[0]}, arg-max, the image only (the earlier phases' "
                                "protocol)"}
    describe |= {n: f"{d} (with the recipe's ensemble and decision)" for n, (_, d) in variants.items() if n != "final"}
    table = []
    for row in dict.fromkeys(frame["row"]):
        g = frame[frame["row"] == row]
        t = {"row": row, "description": describe.get(row, row), "folds": len(g), "members": int(g["members"].iloc[0])}
        for k, _ in METRICS:
            t[f"{k}_mean"], t[f"{k}_std"] = float(g[k].mean()), float(g[k].std(ddof=1))
        table.append(t)
    table = pd.DataFrame(table).set_index("row")
    ref = frame[frame["row"] == "final"].set_index("fold")["weighted_f1"]
    for row in table.index:
        d = frame[frame["row"] == row].set_index("fold")["weighted_f1"] - ref
        table.loc[row, "delta_wf1_mean"], table.loc[row, "delta_wf1_std"] = float(d.mean()), float(d.std(ddof=1))
    write_csv(args.results_dir / "summary.csv", table.reset_index())

    # the final ensemble: every fold x seed model, the mean of the folds' offsets
    fin = [r for r in results if r["row"] == "final"]
    bias = np.mean([r["bias"] for r in fin], axis=0).round(4).tolist()
    members = [trained["final"][f["k"]][sd] for f in folds for sd in seeds]
    best_dir = save_ensemble(args.results_dir / "best", members, bias, {
        "recipe": s, "preset": str(args.preset), "seeds": seeds, "folds": names, "decision": args.decision,
        "tta": [args.tta] if args.tta != "none" and len(views) > 1 else [],
        "fold_biases": [r["bias"] for r in fin],
        "cv": {k: {"mean": float(table.loc["final", f"{k}_mean"]), "std": float(table.loc["final", f"{k}_std"])}
               for k, _ in METRICS}})
    md = markdown(table, s, seeds, args, len(guids), bias, time.time() - t0)
    write_text(args.results_dir / "summary.md", md)
    write_json(args.results_dir / "summary.json", {"table": table.reset_index().to_dict(orient="records"),
                                                   "recipe": s, "seeds": seeds, "folds": names, "bias": bias,
                                                   "inner_val": args.inner_val, "decision": args.decision,
                                                   "seconds": round(time.time() - t0, 1)})
    short = {"final": "final recipe", "final-rule": "− decision rule", "final+rule": "+ decision rule",
             "final-ensemble": "− seed ensemble", "final-tta": "− TTA", "final+tta": "+ TTA",
             "final-single": "single model", "loss_ce": "CE loss", "loss_weighted_ce": "weighted CE",
             "fusion_concat": "concat fusion", "fusion_cross_attention": "cross-attention",
             "side": "+ side features", "no_side": "− side features"}
    grouped_bars(table[[c for c in table.columns if c.endswith(("_mean", "_std"))]].rename(index=short),
                 [("weighted_f1", "weighted F1"), ("f1_neutral", "neutral F1")],
                 args.figures_dir / "contributions.png", ylim=(0, 1),
                 title=f"Final recipe and its ablations: {args.folds}-fold CV, mean ± std over folds")
    confusion_grid({f"final recipe, {args.folds} folds summed\nneutral F1 "
                    f"{table.loc['final', 'f1_neutral_mean']:.3f}": sum(np.asarray(r["confusion_matrix"])
                                                                          for r in fin)},
                   LABELS, args.figures_dir / "confusion.png", ncols=1, title="Held-out predictions (CV)")
    write_errors(fin, Path(args.data_root) / "data", args)
    stamp.write(stamp_path, inputs, [args.results_dir / "summary.csv", best_dir / "ensemble.json"])
    print(md)
    print(f"final ensemble ({len(members)} models, bias {bias}) -> {best_dir} (predict_test.py's default)")
    return 0


def write_errors(fin: list[dict], data_dir: Path, args) -> None:
    """Where the recipe's held-out errors are (msa.errors): errors.md (per class, confusion, slices by the text's
    VADER polarity and length, the most confident mistakes with their texts) and errors.csv (every mistake)."""
    import numpy as np

    from msa import side as side_mod
    from msa.data import LABELS, read_text
    from msa.errors import error_analysis, error_markdown, length_slice, vader_slice
    from msa.io import write_csv, write_text

    guids = [g for r in fin for g in r["guids"]]
    texts = [read_text(data_dir, g).raw for g in guids]
    vader = side_mod.compute("vader", guids, data_dir, args.cache_dir)
    compound = vader.values[:, list(vader.columns).index("vader.compound")]
    a = error_analysis(np.concatenate([r["y"] for r in fin]), np.concatenate([r["proba"] for r in fin]), LABELS,
                       guids, texts, {"text VADER polarity": vader_slice(compound), "text length": length_slice(texts)})
    write_text(args.results_dir / "errors.md", error_markdown(
        a, f"Where the final recipe's errors are ({args.folds}-fold CV, held-out predictions of every fold)"))
    write_csv(args.results_dir / "errors.csv", a["table"])


def describe_recipe(s: dict, seeds: list[int], args) -> str:
    rule = f"neutral/negative offsets chosen on inner validation ({args.bias_metric})" if args.decision == "bias" \
        else "arg-max"
    side = f", side features {s['side_features']}" if s.get("side_features") else ""
    return (f"{s['text_backbone']} + {s['image_backbone']}{side}, {s['feature_fusion']} fusion, {s['loss_type']} loss, "
            f"ensemble of {len(seeds)} seeds, {rule}" + (f", test-time {args.tta} view" if args.tta != "none" else ""))


def markdown(table, s: dict, seeds: list[int], args, n: int, bias, seconds: float) -> str:
    def pm(r, k):
        return f"{r[f'{k}_mean']:.4f} ± {r[f'{k}_std']:.4f}"

    lines = [f"# Final recipe: {args.folds}-fold cross-validation ({n} labelled posts, {seconds:.0f} s)", "",
             f"Recipe (`{args.preset}` and flags): {describe_recipe(s, seeds, args)}; hidden {s['hidden']}, dropout "
             f"{s['dropout']:.3g}, lr {s['learning_rate']:.3g}, weight decay {s['weight_decay']:.3g}, batch "
             f"{s['batch_size']}, at most {s['num_epochs']} epochs (patience {s['patience']}). Inner validation "
             f"{args.inner_val:.0%} of each fold's training part (early stopping and the decision rule).", "",
             "Held-out metrics, mean ± std over folds; Δ weighted F1 is each row minus the final recipe on the same "
             "fold (mean ± std).", "",
             "| row | " + " | ".join(n for _, n in METRICS) + " | Δ weighted F1 | models per fold |",
             "|---|" + "---:|" * (len(METRICS) + 2)]
    for row, r in table.iterrows():
        name = f"**{r['description']}**" if row == "final" else r["description"]
        delta = "" if row == "final" else f"{r['delta_wf1_mean']:+.4f} ± {r['delta_wf1_std']:.4f}"
        lines.append(f"| {name} | " + " | ".join(pm(r, k) for k, _ in METRICS) + f" | {delta} | {r['members']} |")
    lines += ["", f"Final model: the {args.folds} x {len(seeds)} fold x seed models as one ensemble, decision offsets "
              f"{dict(zip(('negative', 'neutral', 'positive'), bias))} (mean over folds) -> `final/results/best/`."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
