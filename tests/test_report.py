"""The report is assembled from whatever the phases wrote: sections, evolution table and figure, provenance."""

from __future__ import annotations

import json

from msa import report


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_report_from_partial_run_folders(tmp_path):
    root = tmp_path
    _write(root / "phase0/results/data_summary.md", "# Phase 0\n\nkept 90 of 100\n")
    _write(root / "phase1/results/Phase1_Baseline_summary.md", "# P1\n\n| a | b |\n")
    _write(root / "phase1/results/Phase1_Baseline_summary.json", json.dumps({
        "seeds": [1, 2], "settings": {"feature_fusion": "concat", "loss_type": "ce"},
        "runs": {"weighted_f1": {"mean": 0.61, "std": 0.01}, "f1_neutral": {"mean": 0.2, "std": 0.05},
                 "accuracy": {"mean": 0.65, "std": 0.02}}}))
    _write(root / "phase3/results/summary.md", "# P3\n\n## sub\n![x](../figures/losses.png)\n")
    _write(root / "phase3/results/best.json", json.dumps({
        "method": "acb-none", "seeds": [1, 2], "method_mean": {
            "weighted_f1": {"mean": 0.64, "std": 0.02}, "f1_neutral": {"mean": 0.3, "std": 0.04},
            "accuracy": {"mean": 0.66, "std": 0.01}}}))
    _write(root / "phase3/figures/losses.png", "png")
    _write(root / "phase3/figures/reliability.png", "png")
    _write(root / "results/predict_provenance.json", json.dumps({
        "output": "predict.txt", "rows": 3, "counts": {"negative": 1, "neutral": 1, "positive": 1},
        "checkpoint": "phase3/results/best/checkpoint", "source_run": "phase3/results/runs/acb-none-s1",
        "model_sha256": "ab" * 32, "backbones": {"text": "minilm"}, "validation": {"weighted_f1": 0.65}}))
    out = report.build(root, root / "results" / "REPORT.md")
    md = out.read_text()
    for title, *_ in report.PHASES:
        assert f"## {title}" in md
    assert md.count("Not run yet") == 5  # phases 2, 4, 5, 6 and the final recipe
    assert "kept 90 of 100" in md and "### sub" in md  # included and demoted one level
    assert "| 1 | baseline: concat + ce | 2 | 0.6100 ± 0.0100 | 0.2000 ± 0.0500 |" in md
    assert "| 3 | acb-none (tuned settings) | 2 | 0.6400 ± 0.0200 |" in md
    assert (root / "results/figures/evolution.png").stat().st_size > 1000
    assert "](figures/evolution.png)" in md
    # a figure the summary links is not repeated; the other figure of the phase is appended
    assert md.count("../phase3/figures/losses.png") == 1 and "../phase3/figures/reliability.png" in md
    assert "a copy of `phase3/results/runs/acb-none-s1`" in md


def test_report_before_any_phase(tmp_path):
    md = report.build(tmp_path, tmp_path / "REPORT.md").read_text()
    assert "No training phase has finished yet" in md and "has not been written" in md


def test_html_report_is_self_contained_with_every_table_and_figure(tmp_path):
    """REPORT.html: one file, every figure embedded as a data URI (none fetched from anywhere), every phase a
    section with its table and its "how to read it" line, and a table of contents."""
    from html.parser import HTMLParser

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = tmp_path
    summaries = {s[0]: s[1][0] for s in report.PHASES}
    for i, (title, path) in enumerate(summaries.items()):
        _write(root / path, f"# {title}\n\n| row | weighted F1 |\n|---|---:|\n| model {i} | 0.{60 + i} |\n")
        figdir = root / report.PHASES[i][2][0]
        figdir.mkdir(parents=True, exist_ok=True)
        plt.figure(figsize=(2, 2))
        plt.plot([0, i])
        plt.savefig(figdir / f"fig{i}.png")
        plt.close()
    report.build(root, root / "results" / "REPORT.md")
    html_path = root / "results" / "REPORT.html"
    text = html_path.read_text()

    class Parse(HTMLParser):
        def __init__(self):
            super().__init__()
            self.imgs, self.sections, self.current, self.links = [], [], None, []

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "img":
                self.imgs.append(a.get("src", ""))
            if tag in ("script", "link", "iframe"):
                self.links.append(tag)
            if tag == "h2":
                self.current = {"title": "", "tables": 0, "in_title": True}
                self.sections.append(self.current)
            if tag == "table" and self.current:
                self.current["tables"] += 1

        def handle_endtag(self, tag):
            if tag == "h2" and self.current:
                self.current["in_title"] = False

        def handle_data(self, data):
            if self.current and self.current["in_title"]:
                self.current["title"] += data

    parser = Parse()
    parser.feed(text)
    assert not parser.links  # no scripts, stylesheets or frames from elsewhere
    assert len(parser.imgs) == len(report.PHASES)  # every phase's figure (no evolution: no best.json here)
    assert all(src.startswith("data:image/png;base64,") for src in parser.imgs)
    by_title = {s["title"]: s for s in parser.sections}
    for title, *_ in report.PHASES:
        assert by_title[title]["tables"] == 1, title
    assert text.count("How to read it:") == len(report.PHASES)
    assert "<nav>" in text and 'href="#phase-0-dataset-audit"' in text


def test_the_final_section_shows_where_the_errors_are(tmp_path):
    _write(tmp_path / "final/results/summary.md", "# Final\n\n| row | wF1 |\n")
    md = report.build(tmp_path, tmp_path / "REPORT.md").read_text()
    assert "Where the errors are" not in md  # no errors.md yet: nothing added
    _write(tmp_path / "final/results/errors.md", "# Where the errors are\n\n## Per class\n\n| class |\n")
    md = report.build(tmp_path, tmp_path / "REPORT.md").read_text()
    final = md[md.index("## Final recipe"):]
    assert "### Where the errors are" in final and "#### Per class" in final
    assert final.index("| row | wF1 |") < final.index("### Where the errors are")


def test_copy_figures_makes_the_report_folder_stand_alone(tmp_path):
    """``--copy-figures`` (make docs-results): every figure is copied next to the report and linked there."""
    root = tmp_path / "repo"
    _write(root / "phase3/results/summary.md", "# P3\n\n![x](../figures/losses.png)\n")
    (root / "phase3/figures").mkdir(parents=True)
    (root / "phase3/figures/losses.png").write_bytes(b"\x89PNG one")
    (root / "phase3/figures/reliability.png").write_bytes(b"\x89PNG two")
    out = tmp_path / "docs" / "results" / "REPORT.md"
    assert report.main(["--root", str(root), "--output", str(out), "--copy-figures"]) == 0
    md = out.read_text()
    assert "](figures/phase3-figures-losses.png)" in md and "](figures/phase3-figures-reliability.png)" in md
    assert "../" not in md  # nothing points outside the folder
    assert (out.parent / "figures/phase3-figures-reliability.png").read_bytes() == b"\x89PNG two"
    # the self-contained HTML twin embeds the copies
    assert md.count("figures/phase3-") == 2 and "data:image/png;base64" in out.with_suffix(".html").read_text()
