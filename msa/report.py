"""One report from the run folders: ``python -m msa.report`` writes results/REPORT.md (and its figure) and
results/REPORT.html, the same report as one self-contained file (figures embedded as data URIs, no network).

It only reads what the phases wrote (their summary tables, best.json files, figures and predict_test's
provenance record) and never recomputes anything, so it is cheap to regenerate after any phase. Missing phases
are listed as not run.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from msa import cli
from msa.io import write_text
from msa.stages import STAGES

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "results" / "REPORT.md"

#: (title, summary markdown files (first found), figure folders (the one at the found summary's position),
#: one-line "how to read"): one section per stage of the registry
PHASES = tuple((st.title, list(st.summaries), list(st.figures), st.how_to_read) for st in STAGES)

#: Further Markdown pages shown after a section's summary when they exist.
EXTRAS = {st.title: list(st.extras) for st in STAGES if st.extras}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _ms(d: dict | None, key: str) -> tuple[float, float] | None:
    """(mean, std) of ``key`` from a ``{key: {"mean", "std"}}`` mapping."""
    v = (d or {}).get(key)
    if isinstance(v, dict) and "mean" in v:
        return float(v["mean"]), float(v.get("std") or 0.0)
    if isinstance(v, (int, float)):
        return float(v), 0.0
    return None


def evolution(root: Path = REPO) -> list[dict]:
    """Phase by phase: the selected model's validation weighted F1, neutral F1 and accuracy (mean ± std over
    seeds, as each phase reports it)."""
    rows = []

    def add(phase, model, stats, n, source):
        if stats and _ms(stats, "weighted_f1"):
            rows.append({"phase": phase, "model": model, "n": n, "source": source,
                         **{k: _ms(stats, k) for k in ("weighted_f1", "f1_neutral", "accuracy")}})

    p1 = _read_json(root / "phase1/results/Phase1_Baseline_summary.json")
    if p1:
        s = p1.get("settings", {})
        add("1", f"baseline: {s.get('feature_fusion')} + {s.get('loss_type')}", p1.get("runs"),
            len(p1.get("seeds", [])), "phase1/results/Phase1_Baseline_summary.json")
    p2 = _read_json(root / "phase2/results/best_config.json")
    if p2 and p2.get("metrics"):
        fs = p2.get("fusion_search") or {}
        best = max(fs, key=fs.get) if fs else p2.get("settings", {}).get("feature_fusion")
        add("2", f"best fusion: {best}", p2["metrics"], len(p2.get("seeds", [])),
            "phase2/results/best_config.json (fusion search)")
    p3 = _read_json(root / "phase3/results/best.json")
    if p3:
        add("3", f"{p3.get('method')} (tuned settings)", p3.get("method_mean"), len(p3.get("seeds") or [])
            or 3, "phase3/results/best.json")
    p4 = _read_json(root / "phase4/results/best.json")
    if p4:
        add("4", f"caption mode {p4.get('mode')}", p4.get("method_mean"), len(p4.get("seeds") or []),
            "phase4/results/best.json")
    fin = _read_json(root / "final/results/summary.json")
    if fin:
        row = next((r for r in fin.get("table", []) if r.get("row") == "final"), None)
        if row:
            stats = {k: {"mean": row[f"{k}_mean"], "std": row[f"{k}_std"]} for k in ("weighted_f1", "f1_neutral",
                                                                                   "accuracy")}
            add("final", f"{len(fin.get('folds', []))}-fold CV ensemble", stats, len(fin.get("folds", [])),
                "final/results/summary.json (mean ± std over folds)")
    return rows


def evolution_figure(rows: list[dict], path: Path) -> Path | None:
    if not rows:
        return None
    import numpy as np

    from msa.io import save_figure
    from msa.plots import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(max(9.0, 2.6 * len(rows) + 2), 4.0))
    xs = np.arange(len(rows))
    for ax, (key, name, color) in zip(axes, (("weighted_f1", "weighted F1", "C0"), ("f1_neutral", "neutral F1",
                                                                                      "C1"))):
        ok = [i for i, r in enumerate(rows) if r[key]]
        m = np.array([rows[i][key][0] for i in ok])
        s = np.array([rows[i][key][1] for i in ok])
        ax.errorbar(xs[ok], m, yerr=s, marker="o", capsize=4, color=color)
        for x, v, e in zip(xs[ok], m, s):
            ax.annotate(f"{v:.3f}\n±{e:.3f}", (x, v + e), textcoords="offset points", xytext=(0, 4), ha="center",
                        fontsize=7.5)
        lo, hi = float((m - s).min()), float((m + s).max())
        pad = max(0.03, (hi - lo) * 0.35)
        ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + 2 * pad))
        ax.set_xticks(xs, [f"phase {r['phase']}\n{r['model']}" for r in rows], fontsize=7)
        ax.set_xlim(-0.5, len(rows) - 0.5)
        ax.set_title(name)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("validation score (mean ± std over seeds)")
    fig.suptitle("Performance evolution, phase by phase (same validation split)")
    fig.tight_layout()
    out = save_figure(fig, path)
    plt.close(fig)
    return out


def _demote(md: str, levels: int = 2) -> str:
    """Shift markdown headings down so an included summary nests under the report's section."""
    return re.sub(r"^(#+)", lambda m: "#" * min(6, len(m.group(1)) + levels), md, flags=re.M)


def _rel(path: Path, out_dir: Path) -> str:
    import os

    return Path(os.path.relpath(path, out_dir)).as_posix()


def _git_commit(root: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance_lines(root: Path, out_dir: Path) -> list[str]:
    rec = _read_json(root / "results" / "predict_provenance.json")
    if not rec:
        return ["`predict.txt` has not been written by this checkout's `phase4/predict_test.py` yet (no "
                "`results/predict_provenance.json`)."]
    lines = [f"`{rec.get('output')}` ({rec.get('rows')} rows: "
             + ", ".join(f"{k} {v}" for k, v in (rec.get("counts") or {}).items()) + f"), written {rec.get('created')}"
             f" by `phase4/predict_test.py` from the checkpoint `{rec.get('checkpoint')}`"
             + (f", a copy of `{rec['source_run']}`" if rec.get("source_run") else "") + ".",
             f"Model weights sha256 `{str(rec.get('model_sha256'))[:16]}…`; backbones: "
             + ", ".join(f"{m} `{b}`" for m, b in (rec.get("backbones") or {}).items()) + "."]
    if rec.get("validation"):
        v = rec["validation"]
        lines.append(f"That run's validation scores: weighted F1 {v.get('weighted_f1', float('nan')):.4f}, neutral F1 "
                     f"{v.get('f1_neutral', float('nan')):.4f}, accuracy {v.get('accuracy', float('nan')):.4f}.")
    return lines


def build(root: Path = REPO, out: Path = DEFAULT_OUT, copy_figures: bool = False) -> Path:
    """The report at ``out`` (and its HTML twin); ``copy_figures``: with copies of the figures next to it."""
    out = Path(out)
    out_dir = out.parent
    rows = evolution(root)
    fig = evolution_figure(rows, out_dir / "figures" / "evolution.png")
    lines = ["# Report: multimodal sentiment pipeline", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')} from the run folders of commit "
             f"`{_git_commit(root)}` by `python -m msa.report`. Every number is on phase 0's persisted validation "
             "split; mean ± std are over seeds.", ""]
    manifest = _read_json(root / "dataset" / "phase0_manifest.json")
    if manifest:
        lines += [f"Data root: `{manifest.get('data_root')}`.", ""]
    lines += ["## Where predict.txt came from", "", *provenance_lines(root, out_dir), "",
              "## Performance evolution", ""]
    if rows:
        lines += ["| phase | selected model | seeds | weighted F1 | neutral F1 | accuracy | from |",
                  "|---|---|---:|---:|---:|---:|---|"]
        for r in rows:
            cells = [f"{r[k][0]:.4f} ± {r[k][1]:.4f}" if r[k] else "-" for k in ("weighted_f1", "f1_neutral",
                                                                                 "accuracy")]
            lines.append(f"| {r['phase']} | {r['model']} | {r['n']} | " + " | ".join(cells) + f" | `{r['source']}` |")
        lines += ["", "Each phase's row is the configuration it selected on this same validation split, so the "
                  "rows are optimistic by the selection itself; the spread over seeds is the honest yardstick.", ""]
        if fig:
            lines += [f"![performance evolution]({_rel(fig, out_dir)})", ""]
    else:
        lines += ["No training phase has finished yet.", ""]
    for title, summaries, figdirs, how in PHASES:
        lines += [f"## {title}", "", f"*How to read it:* {how}", ""]
        at = next((i for i, s in enumerate(summaries) if (root / s).is_file()), None)
        if at is None:
            lines += [f"Not run yet (no `{summaries[0]}`).", ""]
            continue
        found, figdir = root / summaries[at], figdirs[min(at, len(figdirs) - 1)]
        body = found.read_text(encoding="utf-8").strip()
        body = re.sub(r"^# .*\n?", "", body, count=1)  # the section title replaces the file's own
        body = re.sub(r"!\[([^\]]*)\]\((?!https?:|/)([^)]+)\)",
                      lambda m, base=found.parent: f"![{m.group(1)}]({_rel(base / m.group(2), out_dir)})", body)
        lines += [_demote(body, 1), ""]
        for extra in EXTRAS.get(title, []):  # further pages of the section, under their own (demoted) titles
            if (root / extra).is_file():
                lines += [_demote((root / extra).read_text(encoding="utf-8").strip(), 2), ""]
        figures = sorted((root / figdir).glob("*.png")) if (root / figdir).is_dir() else []
        linked = set(re.findall(r"\(([^)]+\.png)\)", body))
        for f in figures:
            if _rel(f, out_dir) not in linked:
                lines += [f"![{f.stem.replace('_', ' ')}]({_rel(f, out_dir)})", ""]
    text = "\n".join(lines).rstrip() + "\n"
    if copy_figures:
        text = _copy_figures(text, out_dir, Path(root))
    md = write_text(out, text)
    write_html(md, out.with_suffix(".html"))
    return md


def _copy_figures(text: str, out_dir: Path, root: Path) -> str:
    """``text`` with every local figure copied under ``out_dir/figures/`` (named by its path in the repository)
    and linked there, so that the report's folder is self-contained (``--copy-figures``, e.g. into docs/)."""
    import shutil

    from msa.io import atomic_path

    def copy(m: re.Match) -> str:
        src = (out_dir / m.group(2)).resolve()
        if not src.is_file() or src.is_relative_to(out_dir.resolve()):
            return m.group(0)
        name = "-".join(src.relative_to(root.resolve()).parts if src.is_relative_to(root.resolve())
                        else src.parts[-3:])
        dest = out_dir / "figures" / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dest) as tmp:
            shutil.copyfile(src, tmp)
        return f"![{m.group(1)}](figures/{name})"

    return re.sub(r"!\[([^\]]*)\]\((?!https?:|/|data:)([^)]+\.png)\)", copy, text)


HTML_STYLE = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; max-width: 72rem;
       margin: 2rem auto; padding: 0 1.5rem; line-height: 1.45; color: #1f2328; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3rem; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; margin-top: 2.5rem; }
table { border-collapse: collapse; margin: 1rem 0; font-size: .9rem; display: block; overflow-x: auto; }
th, td { border: 1px solid #d0d7de; padding: .3rem .6rem; }
th { background: #f6f8fa; } tr:nth-child(even) td { background: #fbfcfd; }
td { font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; border: 1px solid #eaeef2; margin: .5rem 0; }
code { background: #f6f8fa; padding: .1rem .3rem; border-radius: 4px; font-size: .85em; }
em { color: #57606a; }
nav { background: #f6f8fa; padding: .5rem 1rem; border-radius: 6px; }
"""


def write_html(md_path: Path, html_path: Path) -> Path:
    """The markdown report as one self-contained HTML file: tables rendered, every local image embedded as a
    data URI (a missing one becomes a note), a table of contents of the sections."""
    import base64
    import html
    import mimetypes

    import markdown

    md_path, html_path = Path(md_path), Path(html_path)
    body = markdown.markdown(md_path.read_text(encoding="utf-8"), extensions=["tables", "toc"])

    def embed(m: re.Match) -> str:
        src = html.unescape(m.group(2))
        if src.startswith("data:"):
            return m.group(0)
        path = (md_path.parent / src).resolve()
        if not path.is_file():
            return f"<em>(figure {html.escape(src)} is missing)</em>"
        mime = mimetypes.guess_type(path.name)[0] or "image/png"
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'{m.group(1)}data:{mime};base64,{data}{m.group(3)}'

    body = re.sub(r'(<img\b[^>]*?\bsrc=")([^"]+)(")', embed, body)
    sections = re.findall(r'<h2 id="([^"]+)">(.*?)</h2>', body)
    nav = "<nav><strong>Sections:</strong> " + " · ".join(f'<a href="#{i}">{t}</a>' for i, t in sections) + "</nav>"
    body = re.sub(r"</h1>", lambda m: m.group(0) + "\n" + nav, body, count=1)
    page = ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>Report: multimodal sentiment pipeline</title>\n<style>{HTML_STYLE}</style>\n</head>\n"
            f"<body>\n{body}\n</body>\n</html>\n")
    return write_text(html_path, page)


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(description="Write results/REPORT.md from the phases' run folders (reads summaries, "
                                       "best.json files, figures and predict_test's provenance; computes nothing).")
    p.add_argument("--root", type=Path, default=REPO, help="repository root whose phase*/ folders are read")
    p.add_argument("--output", type=Path, default=DEFAULT_OUT, help="the report's path (its figure goes next to it)")
    p.add_argument("--copy-figures", action="store_true",
                   help="copy every figure the report shows into figures/ next to it, so that its folder stands "
                        "alone (make docs-results: docs/results/REPORT.md)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    out = build(Path(args.root), Path(args.output), copy_figures=args.copy_figures)
    print(f"report -> {out} and {out.with_suffix('.html')} (self-contained; open it in a browser)")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
