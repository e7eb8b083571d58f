"""msa.errors: per-class scores, confusion shares, slices and the most confident mistakes, from planted predictions."""

from __future__ import annotations

import numpy as np
import pytest

from msa.errors import error_analysis, error_markdown, length_slice, vader_slice

LABELS = ["negative", "neutral", "positive"]


def planted():
    # true: 4 negative, 2 neutral, 4 positive; mistakes: neg->pos (p .9 and .6), neu->pos (.7), pos->neg (.8)
    y = ["negative"] * 4 + ["neutral"] * 2 + ["positive"] * 4
    p = np.array([[.8, .1, .1], [.7, .2, .1], [.05, .05, .9], [.2, .2, .6],
                  [.1, .8, .1], [.1, .2, .7],
                  [.1, .1, .8], [.1, .1, .8], [.2, .1, .7], [.8, .1, .1]])
    texts = ["bad | day", "awful", "lol great?", "meh ok", "a chair", "a sunny chair", "love it", "yay", "nice",
             "so sad | but happy"]
    return y, p, [f"g{i}" for i in range(10)], texts


def test_per_class_confusion_and_examples_match_the_planted_mistakes():
    y, p, guids, texts = planted()
    a = error_analysis(y, p, LABELS, guids, texts, examples=1)
    assert a["n"] == 10 and a["errors"] == 4
    assert a["confusion"] == [[2, 0, 2], [0, 1, 1], [1, 0, 3]]
    pc = {r["class"]: r for r in a["per_class"]}
    assert pc["negative"]["recall"] == pytest.approx(0.5) and pc["negative"]["precision"] == pytest.approx(2 / 3)
    assert pc["positive"]["predicted"] == 6 and pc["neutral"]["f1"] == pytest.approx(2 / 3)
    assert a["shares"][0] == pytest.approx([0.5, 0.0, 0.5])
    assert set(a["examples"]) == {"negative->positive", "neutral->positive", "positive->negative"}
    top = a["examples"]["negative->positive"]
    assert len(top) == 1 and top[0]["guid"] == "g2" and top[0]["confidence"] == pytest.approx(0.9)  # most confident
    assert list(a["table"]["guid"]) == ["g2", "g3", "g5", "g9"]


def test_slices_count_posts_and_accuracy_per_group():
    y, p, guids, texts = planted()
    groups = ["a"] * 5 + ["b"] * 5
    a = error_analysis(y, p, LABELS, guids, texts, slices={"half": groups})
    rows = {r["group"]: r for r in a["slices"]}
    assert rows["a"]["posts"] == 5 and rows["a"]["accuracy"] == pytest.approx(3 / 5)
    assert rows["b"]["accuracy"] == pytest.approx(3 / 5) and rows["b"]["true_positive"] == 4
    assert a["table"]["half"].tolist() == ["a", "a", "b", "b"]
    with pytest.raises(ValueError, match="slice 'half' has 3 entries"):
        error_analysis(y, p, LABELS, slices={"half": ["a"] * 3})


def test_markdown_escapes_table_cells_and_names_every_pair():
    y, p, guids, texts = planted()
    md = error_markdown(error_analysis(y, p, LABELS, guids, texts))
    assert "4 of 10 posts misclassified" in md and "| negative | 2 (50%) | 0 (0%) | 2 (50%) |" in md
    assert "### true neutral, predicted positive (1 posts)" in md
    assert "so sad \\| but happy" in md and "bad" not in md  # g9 escaped; g0 is correct: not listed
    assert "lol great?" in md and "g9" in md


def test_bad_inputs_are_clear_errors():
    y, p, guids, texts = planted()
    with pytest.raises(ValueError, match="proba must be"):
        error_analysis(y, p[:, :2], LABELS)
    with pytest.raises(ValueError, match="one entry per post"):
        error_analysis(y, p, LABELS, guids[:3])


def test_vader_and_length_slices():
    assert vader_slice([0.5, -0.5, 0.0, np.nan]).tolist() == ["positive", "negative", "neutral", "no text"]
    assert length_slice(["a", "a b c d e f", " ".join(["w"] * 20)]).tolist() == \
        ["<= 5 words", "6-15 words", "> 15 words"]
