"""The popularity-trend task's outputs (seed 003, run_trend.py): the per-run table, the metrics (mean and std over
seeds) as JSON and markdown, the test predictions, the split table, the run's record and the figure."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.trend.data import CLASS_NAMES, CLASS_VALUES, split_dates, split_post_days

log = logging.getLogger("trend")
REGRESSION_METRICS = ("MAE", "RMSE", "Corr", "R2")
CLASSIFICATION_METRICS = ("accuracy", "macro_f1")


def _clean(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def summarise(per_seed: dict[int, dict], names) -> dict:
    from msa.metrics import mean_std

    out = {}
    for k in names:
        vals = [per_seed[s][k] for s in per_seed]
        mean, std = mean_std(vals)
        out[k] = {"mean": _clean(mean), "std": _clean(std) if math.isfinite(mean) else None,
                  "per_seed": {str(s): _clean(float(v)) for s, v in zip(per_seed, vals)}}
    return out


def metrics_markdown(metrics: dict, task: str, names, row_label: dict, info: dict) -> str:
    def cell(v):
        return "-" if v["mean"] is None else f"{v['mean']:.4f} ± {v['std']:.4f}"

    sizes = info["split"]["sizes"]
    lines = [f"# Popularity trend ({task}), window {info['window']} days, seeds "
             f"{', '.join(map(str, info['seeds']))}", "",
             f"Test metrics, mean ± std over seeds. Chronological split with a purge gap of {info['gap']} days: "
             f"{sizes['train']} train / {sizes['val']} validation / {sizes['test']} test target dates "
             f"({sizes['purged']} purged); test dates {info['split']['dates']['test'][0]} to "
             f"{info['split']['dates']['test'][1]}.", "",
             "| row | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for row, m in metrics.items():
        lines.append(f"| {row_label.get(row, row)} | " + " | ".join(cell(m[k]) for k in names) + " |")
    return "\n".join(lines) + "\n"


def write_report(out: Path, args, seeds: list[int], rows: list[str], data, posts: pd.DataFrame, count, sizes: dict,
                 thresholds, prob, backbones: dict, results: dict, t_start: float) -> tuple[str, Path]:
    """Writes config.json, runs.csv, split.csv, test_predictions.csv, the figure, metrics.md and metrics.json to
    ``out``; returns the markdown and the figure's path."""
    from msa.io import write_csv, write_json, write_text

    names = REGRESSION_METRICS if args.task == "regression" else CLASSIFICATION_METRICS
    row_label = {"mean": "majority" if args.task == "classification" else "mean"}
    run_rows = run_table(results, rows, seeds, names, row_label)
    metrics = {row_label.get(r, r): summarise({s: results[r][s]["test"] for s in seeds}, names) for r in rows}
    preds, main_row = predictions(data.targets, results, rows, seeds, args.task, row_label)
    split_frame = split_table(data.targets, data.skipped, args.window + args.extra_gap)
    info = run_info(args, out, seeds, rows, data, posts, count, sizes, thresholds, prob, backbones, results, t_start)
    write_json(out / "config.json", info)
    write_csv(out / "runs.csv", pd.DataFrame(run_rows))
    write_csv(out / "split.csv", split_frame)
    write_csv(out / "test_predictions.csv", preds)
    plot_preds = preds.assign(date=pd.to_datetime(preds["date"]))
    scores = ", ".join(f"{k} {metrics[main_row][k]['mean']:.3f}" for k in names
                       if metrics[main_row][k]["mean"] is not None)
    fig = plot_predictions(out / "figures" / "pred_vs_true.png", data.targets, plot_preds, args.task, thresholds,
                           f"popularity trend ({args.task}), window {args.window} d: test {main_row} {scores}",
                           main_row=main_row)
    md_text = metrics_markdown(metrics, args.task, names, {}, info)
    write_text(out / "metrics.md", md_text)
    write_json(out / "metrics.json", metrics)
    return md_text, fig


def run_table(results: dict, rows: list[str], seeds: list[int], names, row_label: dict) -> list[dict]:
    """One line per row x seed (runs.csv), each also logged."""
    run_rows = []
    for r, s in [(r, s) for r in rows for s in seeds]:
        res = results[r][s]
        run_rows.append({"row": row_label.get(r, r), "seed": s, "best_epoch": res["best_epoch"],
                         "epochs_run": res["epochs_run"], "seconds": res["seconds"],
                         **{f"val_{k}": res["val"][k] for k in names}, **{f"test_{k}": res["test"][k] for k in names}})
        log.info("%s seed %d: test %s (best epoch %d)", row_label.get(r, r), s,
                 "  ".join(f"{k} {res['test'][k]:.4f}" for k in names), res["best_epoch"])
    return run_rows


def predictions(targets: pd.DataFrame, results: dict, rows: list[str], seeds: list[int], task: str,
                row_label: dict) -> tuple[pd.DataFrame, str]:
    """test_predictions.csv (the rows' seed means; ``pred`` is the main row's) and the main row's label."""
    test = targets[targets["split"] == "test"].reset_index(drop=True)
    preds = pd.DataFrame({"date": test["date"].dt.date.astype(str), "value": test["value"]})
    if task == "classification":
        preds["trend"] = test["trend"].to_numpy()
    for r in rows:
        mean_out = np.mean([results[r][s]["test_out"] for s in seeds], axis=0)
        col = "pred" if r == "full" else f"pred_{r}"
        if task == "regression":
            preds[col] = np.round(mean_out, 6)
        else:
            preds[col] = np.asarray(CLASS_VALUES)[mean_out.argmax(1)]
    main_row = "full"
    if "full" not in rows:  # the main prediction column is the most complete row run
        main_row = ([r for r in rows if r != "mean"] or rows)[-1]
        preds = preds.rename(columns={f"pred_{main_row}": "pred"})
        main_row = row_label.get(main_row, main_row)
    first = [c for c in ("date", "value", "trend", "pred") if c in preds.columns]
    return preds[first + [c for c in preds.columns if c not in first]], main_row


def split_table(targets: pd.DataFrame, skipped: list[dict], gap: int) -> pd.DataFrame:
    """split.csv: every target date with its split (train / val / test / purged / skipped) and why."""
    split_frame = targets[["date", "value", "split"]].copy()
    if "trend" in targets.columns:
        split_frame["trend"] = targets["trend"]
    split_frame["reason"] = ""
    split_frame.loc[split_frame["split"] == "purged", "reason"] = (
        f"window overlaps the previous split's windows (gap {gap} days)")
    skipped_t = pd.DataFrame([{"date": s["id"], "value": np.nan, "split": "skipped", "reason": s["reason"]}
                              for s in skipped if s["what"] == "target"])
    split_frame["date"] = split_frame["date"].dt.date.astype(str)
    split_frame = pd.concat([split_frame, skipped_t], ignore_index=True) if len(skipped_t) else split_frame
    return split_frame.sort_values("date", kind="stable").reset_index(drop=True)


def run_info(args, out: Path, seeds: list[int], rows: list[str], data, posts: pd.DataFrame, count, sizes: dict,
             thresholds, prob, backbones: dict, results: dict, t_start: float) -> dict:
    """config.json: arguments, backbones, numeric columns, split dates and sizes, class thresholds, skipped inputs."""
    import torch

    classification = args.task == "classification"
    targets = data.targets
    info = {
        "task": args.task, "window": args.window, "gap": args.window + args.extra_gap, "seeds": seeds, "rows": rows,
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "out": str(out), "backbones": backbones, "numeric_columns": data.columns, "numeric_agg": args.numeric_agg,
        "side_branch": prob.side_stats, "first_post_date": str(data.start.date()), "n_days": data.n_days,
        "posts": {"read": int(len(data.posts)), "used": int(len(posts)),
                  "days_with_posts_used": int((count > 0).sum())},
        "split": {"sizes": sizes, "dates": {s: split_dates(targets, s) for s in ("train", "val", "test")},
                  "post_days": {s: split_post_days(targets, s, args.window, data.start)
                                for s in ("train", "val", "test")}},
        "classes": {"values": list(CLASS_VALUES), "names": list(CLASS_NAMES),
                    "thresholds": thresholds, "given": classification and thresholds is None}
        if classification else None,
        "target_standardisation": {"mean": prob.y_mean, "std": prob.y_std} if args.task == "regression" else None,
        "skipped": data.skipped, "seconds": round(time.time() - t_start, 1), "torch": torch.__version__,
    }
    if classification and "full" in results:
        info["test_confusion_matrix_full"] = {str(s): results["full"][s]["test"]["confusion_matrix"] for s in seeds}
    return info


def plot_predictions(path: Path, targets: pd.DataFrame, preds: pd.DataFrame, task: str, thresholds, title: str,
                     main_row: str = "full"):
    """Top: the true value over all target dates, coloured by split (classification: with the class thresholds).
    Bottom left: the test period, true vs the rows' predictions (seed means). Bottom right: regression, predicted
    vs true of the full model; classification, its confusion matrix."""
    from msa.io import save_figure
    from msa.plots import pyplot

    plt = pyplot()
    rows = {"pred": (main_row, "#e76f51", "-", 1.6), "pred_image_text": ("image_text", "#2a9d8f", "--", 1.0),
            "pred_numeric": ("numeric", "#6a4c93", ":", 1.2),
            "pred_mean": ("majority" if task == "classification" else "training mean", "black", "-", 0.8)}
    fig = plt.figure(figsize=(13, 7.5))
    grid = fig.add_gridspec(2, 2, width_ratios=[2.4, 1], height_ratios=[1, 1.15], hspace=0.35, wspace=0.18)
    _plot_values(fig.add_subplot(grid[0, :]), targets, preds, task, thresholds, main_row)
    zoom = fig.add_subplot(grid[1, 0])
    side = fig.add_subplot(grid[1, 1])
    if task == "regression":
        _plot_regression_test(zoom, side, preds, rows, main_row)
    else:
        _plot_classification_test(zoom, side, preds, rows, main_row)
    zoom.set_title("test period: true vs predicted (mean over seeds)", fontsize=9)
    zoom.set_xlabel("window end date")
    zoom.legend(fontsize=7, ncol=3, loc="best")
    for label in zoom.get_xticklabels():
        label.set_rotation(25)
        label.set_ha("right")
    fig.suptitle(title)
    save_figure(fig, path)
    plt.close(fig)
    return path


_COLORS = {"train": "#8d99ae", "val": "#e9c46a", "purged": "#d1495b", "test": "#264653"}


def _plot_values(top, targets: pd.DataFrame, preds: pd.DataFrame, task: str, thresholds, main_row: str) -> None:
    if targets["value"].notna().any():
        for s in ("train", "val", "purged", "test"):
            t = targets[targets["split"] == s]
            top.plot(t["date"], t["value"], ".", ms=2.5, color=_COLORS[s], label=f"{s} ({len(t)})")
        for q in thresholds or []:
            top.axhline(q, ls="--", color="grey", lw=0.8)
        if task == "regression":
            top.plot(preds["date"], preds["pred"], "-", lw=1.2, color="#e76f51", label=f"{main_row} (test)")
        top.set_ylabel("value")
        top.legend(fontsize=7, ncol=5, loc="upper left")
    top.set_title("true value of every target date by split (purged: dropped for the gap)"
                  + ("; dashed: class thresholds from the training windows" if thresholds else ""), fontsize=9)


def _plot_regression_test(zoom, side, preds: pd.DataFrame, rows: dict, main_row: str) -> None:
    zoom.plot(preds["date"], preds["value"], "o", ms=2.5, color=_COLORS["test"], label="true")
    for col, (name, color, style, lw) in rows.items():
        if col in preds:
            zoom.plot(preds["date"], preds[col], style, lw=lw, color=color, label=name)
    zoom.set_ylabel("value")
    lo = float(min(preds["value"].min(), preds["pred"].min()))
    hi = float(max(preds["value"].max(), preds["pred"].max()))
    side.plot([lo, hi], [lo, hi], "--", color="grey", lw=1)
    side.scatter(preds["value"], preds["pred"], s=8, color="#e76f51", alpha=0.7)
    side.set_xlabel("true value")
    side.set_ylabel(f"predicted ({main_row})")
    side.set_title("test: predicted vs true", fontsize=9)


def _plot_classification_test(zoom, side, preds: pd.DataFrame, rows: dict, main_row: str) -> None:
    zoom.step(preds["date"], preds["trend"], where="mid", color=_COLORS["test"], lw=3, alpha=0.45, label="true")
    for col, (name, color, style, lw) in rows.items():
        if col == "pred":  # the other rows' step lines would hide it; their scores are in metrics.md
            zoom.step(preds["date"], preds[col], style, where="mid", lw=lw, color=color, label=name)
    zoom.set_yticks(list(CLASS_VALUES), [f"{v} {n}" for v, n in zip(CLASS_VALUES, CLASS_NAMES)])
    cm = np.zeros((3, 3), dtype=int)
    for t, p in zip(preds["trend"], preds["pred"]):
        cm[CLASS_VALUES.index(int(t)), CLASS_VALUES.index(int(p))] += 1
    side.imshow(cm, cmap="Blues")
    for i in range(3):
        for j in range(3):
            side.text(j, i, str(cm[i, j]), ha="center", va="center",
                      color="white" if cm[i, j] > cm.max() / 2 else "black")
    side.set_xticks(range(3), CLASS_NAMES)
    side.set_yticks(range(3), CLASS_NAMES)
    side.set_xlabel(f"predicted ({main_row})")
    side.set_ylabel("true")
    side.set_title("test confusion matrix", fontsize=9)
