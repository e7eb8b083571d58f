"""The final recipe as a stage: cross-validation of one configuration on phase 0's folds with inner validation,
the variants of its contribution table, the held-out evaluation of every row, the summary table, the fold x seed
ensemble that predict_test uses, where the errors are and the figures; :func:`run` is the whole recipe on the parsed
flags. ``final/run_final.py`` is the front end (flags, stamp, printing); docs/final.md explains the protocol.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from msa import cli

log = logging.getLogger("final")
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
#: the decision rules (``--decision``) and what the bias offsets maximise (``--bias-metric``)
DECISIONS = ("bias", "argmax")
BIAS_METRICS = ("weighted_f1", "macro_f1", "accuracy")
#: the contribution figure's short row names
SHORT = {"final": "final recipe", "final-rule": "− decision rule", "final+rule": "+ decision rule",
         "final-ensemble": "− seed ensemble", "final-tta": "− TTA", "final+tta": "+ TTA",
         "final-single": "single model", "loss_ce": "CE loss", "loss_weighted_ce": "weighted CE",
         "fusion_concat": "concat fusion", "fusion_cross_attention": "cross-attention",
         "side": "+ side features", "no_side": "− side features"}


# ------------------------------------------------------------------------------------------- the recipe
def fold_names(args) -> list[str]:
    """Phase 0's split names of ``--folds`` (``cv<K>-0`` ..), each checked to exist (and ``--folds`` and
    ``--inner-val`` to be in range) before anything runs."""
    from msa.splits import split_path

    if args.folds < 2 or not 0.0 < args.inner_val < 0.5:
        raise cli.UserError("--folds must be >= 2, --inner-val in (0, 0.5)")
    work = cli.work_dir(args)
    names = [f"cv{args.folds}-{k}" for k in range(args.folds)]
    missing = [n for n in names if not split_path(work, n).is_file()]
    if missing:
        raise cli.UserError(f"split(s) {', '.join(missing)} not found in {work / 'splits'}: run phase 0 with "
                            f"--folds {args.folds} (python phase0/data_cleaner.py --data-root DATA --folds "
                            f"{args.folds} --force)")
    return names


def input_files(args, names: list[str], side_specs: set[str]) -> list[Path]:
    """What the recipe reads (for the stamp): phase 0's outputs and folds, the preset, the side features' CSVs."""
    from msa import side as side_mod
    from msa.splits import split_path

    work = cli.work_dir(args)
    return [work / "phase0_manifest.json", work / "train_cleaned.txt", *(split_path(work, n) for n in names),
            Path(args.preset), *(f for spec in sorted(side_specs) for f in side_mod.csv_files(spec))]


def run(args, s, variants: dict, side_specs: set[str], names: list[str], seeds: list[int],
        t0: float) -> tuple[str, Path, list, int]:
    """The recipe on the parsed flags of ``final/run_final.py``: the folds, every variant's runs, the tables,
    best/ (the ensemble), the figures and the errors. Returns ``(summary.md text, best/, the offsets, folds)``."""
    from concurrent.futures import ThreadPoolExecutor

    from msa.io import write_csv, write_json, write_text
    from msa.workers import prestart

    folds = make_folds(cli.work_dir(args), names, args.inner_val)
    guids = folds[0]["data"].guids
    test = test_guids(args)
    # the side features (image statistics: decoding, which releases the GIL) in a thread while this one imports
    # and loads the backbones on one core; the fork server only after the extraction (started before it, it held
    # ~300 MiB more at the run's peak, 3,680 MiB PSS), so that it imports while this process attaches the side
    # features and the pool's workers start at once
    with ThreadPoolExecutor(1, thread_name_prefix="side") as pool:
        sides = pool.submit(side_features, side_specs, guids, args)
        # predict_test's side features, into their cache (after those)
        test_sides = pool.submit(side_features, {s["side_features"]}, test, args) if test and s.get(
            "side_features") else None
        views, view = feature_views(s, variants, guids, args, test)
        prestart(args.jobs)
        sides = sides.result()
    if test_sides is not None and test_sides.exception() is not None:  # a cache warm-up: never fatal, never silent
        log.warning("the test posts' side features were not computed here (predict_test will): %s",
                    test_sides.exception())
    results, trained = run_variants(variants, s, views, sides, folds, seeds, args,
                                    cli.args_record(args) | {"resolved": s})
    frame = write_fold_tables(results, args.results_dir)
    table = contribution_table(frame, row_descriptions(s, seeds, args, variants, view))
    write_csv(args.results_dir / "summary.csv", table.reset_index())
    best_dir, bias, fin = save_final_ensemble(results, trained, folds, seeds, table, s, names, args,
                                              has_view=len(views) > 1)
    md = markdown(table, s, seeds, args, len(guids), bias, time.time() - t0)
    write_text(args.results_dir / "summary.md", md)
    write_json(args.results_dir / "summary.json", {"table": table.reset_index().to_dict(orient="records"),
                                                   "recipe": s, "seeds": seeds, "folds": names, "bias": bias,
                                                   "inner_val": args.inner_val, "decision": args.decision,
                                                   "seconds": round(time.time() - t0, 1)})
    write_figures(table, fin, args)
    write_errors(fin, Path(args.data_root) / "data", args)
    return md, best_dir, bias, len(folds)


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
    from msa.experiment import RunSpec, run_groups

    groups = {}
    for f in folds:
        specs = [RunSpec(args.results_dir / "runs" / name / f"fold{f['k']}-s{seed}", settings, seed, loss_kw=loss_kw,
                         light=False, tag=name, train_idx=f["inner_train"], val_idx=f["inner_val"],
                         resume=args.resume, mixed_precision=args.mixed_precision) for seed in seeds]
        groups[f["k"]] = (specs, fs, f["data"], record)
    run_groups(groups, jobs=args.jobs, desc=f"final {name}, fold x seed")  # one pool for every fold
    return {k: {sp.seed: sp.run_dir / "checkpoint" for sp in specs} for k, (specs, *_) in groups.items()}


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
    from msa.metrics import pm

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


# ------------------------------------------------------------------------------------------- the stage's steps
def choose_variants(s: dict, args) -> dict:
    """``{name: (settings overrides, description)}``: the recipe, and with ``--ablation`` the trained variants of the
    contribution table (``--variants`` picks some); a token fusion is skipped for a backbone group."""
    from msa import side as side_mod

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
    if len(variants) == 1:
        return variants
    from msa.backbones import GROUP_SEP
    from msa.experiment import token_modalities

    grouped = [m for m in ("text_backbone", "image_backbone") if GROUP_SEP in str(s.get(m) or "")]
    for name in [v for v in variants if v != "final"]:
        vs = s.replace(**variants[name][0])
        if grouped and token_modalities(vs["feature_fusion"]):
            log.warning("variant %s skipped: fusion %s attends over token sequences, which a backbone group (%s) "
                        "does not have", name, vs["feature_fusion"], ", ".join(str(s[m]) for m in grouped))
            del variants[name]
    return variants


def make_folds(work: Path, names: list[str], inner_val: float) -> list[dict]:
    """Phase 0's folds, each training part split again (stratified, seeded by the fold) into inner-train and
    inner-validation; the folds' validation parts must partition the cleaned index."""
    from msa.data import LABELS
    from msa.experiment import Labelled, load_labelled
    from msa.splits import stratified_holdout

    folds = []
    for k, n in enumerate(names):
        data = load_labelled(work, n)
        tr = data.train_idx
        inner = stratified_holdout([data.guids[i] for i in tr], [LABELS[data.labels[i]] for i in tr],
                                   inner_val, seed=1000 + k)
        side = dict(zip(inner["guid"], inner["split"]))
        inner_train = [i for i in tr if side[data.guids[i]] == "train"]
        inner_val_idx = [i for i in tr if side[data.guids[i]] == "val"]
        folds.append({"k": k, "data": Labelled(data.guids, data.labels, data.split, inner_train, inner_val_idx),
                      "inner_train": inner_train, "inner_val": inner_val_idx, "val": data.val_idx})
    all_val = sorted(i for f in folds for i in f["val"])
    if all_val != list(range(len(folds[0]["data"].guids))):
        raise cli.UserError(f"the validation parts of {', '.join(names)} do not partition the cleaned index: "
                            "rerun phase 0 with --force")
    return folds


def test_guids(args) -> list[str]:
    """The guids of ``--test-file`` (``auto``: ``<data-root>/test_without_label.txt`` when it exists; ``none``:
    none), whose features :func:`feature_views` puts into the cache for predict_test. An unreadable index is a
    warning, not an error: predict_test then computes them itself."""
    from msa.data import read_index

    if args.test_file == "none":
        return []
    path = Path(args.data_root) / "test_without_label.txt" if args.test_file == "auto" else Path(args.test_file)
    if args.test_file == "auto" and not path.is_file():
        return []
    try:
        return list(read_index(path, labelled=False).guids)
    except (OSError, cli.UserError) as exc:
        log.warning("--test-file %s: %s; predict_test will compute the test posts' features itself", path, exc)
        return []


def feature_views(s: dict, variants: dict, guids: list[str], args, test: list[str] = ()) -> tuple[dict, str]:
    """``({"image": features, <view>: features of the mirrored images}, view name)``: the mirrored view only with
    ``--tta`` or ``--ablation`` (which shows what it would add). ``test`` (unlabelled guids, :func:`test_guids`):
    their features by the recipe's backbones go into the cache too, each set in its own batches as predict_test
    computes them (the same features, bit for bit), so that predict_test loads no backbone."""
    from msa.experiment import labelled_features, load_backbones, token_modalities
    from msa.features import extract_features, with_image_view

    fusions = {s.replace(**ov).feature_fusion for ov, _ in variants.values()}
    tb, ib = load_backbones(s["text_backbone"], s["image_backbone"], s["text_pooling"], args.cache_dir)
    token_mods = sorted({m for f in fusions for m in token_modalities(f)})
    data_dir = Path(args.data_root) / "data"
    fs = labelled_features(data_dir, guids, tb, ib, args.cache_dir, token_mods, args.feature_batch_size)
    views = {"image": fs}
    view = args.tta if args.tta != "none" else "hflip"
    if ib is not None and (args.tta != "none" or args.ablation):
        views[view] = with_image_view(fs, extract_features(
            guids, data_dir, None, ib, args.cache_dir, tokens=[m for m in token_mods if m == "image"],
            batch_size=args.feature_batch_size, image_view=view))
    if test:
        own = token_modalities(s["feature_fusion"])  # the ensemble's (the recipe's) token sequences only
        try:
            extract_features(test, data_dir, tb, ib, args.cache_dir, tokens=own, batch_size=args.feature_batch_size)
            if ib is not None and args.tta != "none":
                extract_features(test, data_dir, None, ib, args.cache_dir, tokens=[m for m in own if m == "image"],
                                 batch_size=args.feature_batch_size, image_view=args.tta, check_files=False)
        except cli.UserError as exc:
            log.warning("the test posts' features were not computed here (predict_test will): %s", exc)
    return views, view


def side_features(side_specs: set[str], guids: list[str], args) -> dict:
    """``{spec: side matrix}`` of the labelled posts, once per spec of the variants (:func:`msa.side.compute`)."""
    from msa import side as side_mod

    return {spec: side_mod.compute(spec, guids, Path(args.data_root) / "data", args.cache_dir)
            for spec in sorted(side_specs)}


def run_variants(variants: dict, s: dict, views: dict, sides: dict, folds: list[dict], seeds: list[int],
                 args, record: dict) -> tuple[list[dict], dict]:
    """Train every variant on every fold and seed and evaluate its rows: ``(held-out results, {variant: {fold:
    {seed: checkpoint}}})``. ``sides`` holds each spec's side features (:func:`side_features`); imputation and
    standardisation are fitted per model on its own inner-training rows (msa.experiment.train_run)."""
    from msa import side as side_mod

    labels = folds[0]["data"].labels
    results, trained = [], {}
    for name, (override, _) in variants.items():
        vs = s.replace(**override)
        sm = sides[vs.get("side_features") or ""]
        vviews = {v: side_mod.attach(f, sm) for v, f in views.items()}
        trained[name] = train_variant(name, vs, loss_keywords(vs["loss_type"], args), vviews["image"], folds, seeds,
                                      args, record)
        rows = free_rows(args, len(views) > 1) if name == "final" else {name: recipe_parts(args)}
        results += evaluate(name, trained[name], vviews, folds, labels, args, rows)
    return results, trained


def write_fold_tables(results: list[dict], results_dir: Path):
    """folds.csv (metrics per fold and row) and predictions.csv (held-out probabilities); returns the folds frame."""
    import pandas as pd

    from msa.data import LABELS
    from msa.io import write_csv

    frame = pd.DataFrame([{k: v for k, v in r.items() if k not in ("proba", "guids", "y", "confusion_matrix")}
                          for r in results])
    write_csv(results_dir / "folds.csv", frame.assign(bias=frame["bias"].map(json.dumps)))
    pred_rows = []
    for r in results:
        block = pd.DataFrame({"row": r["row"], "fold": r["fold"], "guid": r["guids"],
                              "label": [LABELS[k] for k in r["y"]], "pred": [LABELS[k] for k in r["proba"].argmax(1)]})
        for j, lab in enumerate(LABELS):
            block[f"p_{lab}"] = r["proba"][:, j].round(6)
        pred_rows.append(block)
    write_csv(results_dir / "predictions.csv", pd.concat(pred_rows, ignore_index=True))
    return frame


def row_descriptions(s: dict, seeds: list[int], args, variants: dict, view: str) -> dict[str, str]:
    describe = {"final": "final recipe: " + describe_recipe(s, seeds, args),
                "final-rule": "− decision rule (arg-max)",
                "final+rule": f"+ decision rule (neutral/negative offsets chosen on inner validation, "
                              f"{args.bias_metric})",
                "final-ensemble": f"− seed ensemble (seed {seeds[0]} only)",
                "final-tta": f"− test-time augmentation (the image only, no {view} view)",
                "final+tta": f"+ test-time augmentation (mean over the image and its {view} view)",
                "final-single": f"single model: seed {seeds[0]}, arg-max, the image only (the earlier phases' "
                                "protocol)"}
    return describe | {n: f"{d} (with the recipe's ensemble and decision)" for n, (_, d) in variants.items()
                       if n != "final"}


def contribution_table(frame, describe: dict[str, str]):
    """One row per table row: mean ± std over folds of every metric, and Δ weighted F1 against the recipe on the
    same fold."""
    import pandas as pd

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
    return table


def save_final_ensemble(results: list[dict], trained: dict, folds: list[dict], seeds: list[int], table, s: dict,
                        names: list[str], args, has_view: bool) -> tuple[Path, list, list[dict]]:
    """The final model: every fold x seed model as one ensemble with the mean of the folds' offsets, in
    ``<results>/best``; returns ``(its folder, the offsets, the recipe's held-out results)``."""
    import numpy as np

    from msa.ensemble import save_ensemble

    fin = [r for r in results if r["row"] == "final"]
    bias = np.mean([r["bias"] for r in fin], axis=0).round(4).tolist()
    members = [trained["final"][f["k"]][sd] for f in folds for sd in seeds]
    best_dir = save_ensemble(args.results_dir / "best", members, bias, {
        "recipe": s, "preset": str(args.preset), "seeds": seeds, "folds": names, "decision": args.decision,
        "tta": [args.tta] if args.tta != "none" and has_view else [],
        "fold_biases": [r["bias"] for r in fin],
        "cv": {k: {"mean": float(table.loc["final", f"{k}_mean"]), "std": float(table.loc["final", f"{k}_std"])}
               for k, _ in METRICS}})
    return best_dir, bias, fin
