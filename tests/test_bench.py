"""The pipeline benchmark's memory probe: PSS counts shared pages once, so it never exceeds RSS, and a child
process's memory is included."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from benchmarks.bench_pipeline import tree_memory


def test_tree_memory_counts_children_and_pss_is_at_most_rss():
    me = psutil.Process()
    alone_pss, alone_rss = tree_memory(me)
    assert 0 < alone_pss <= alone_rss
    child = subprocess.Popen([sys.executable, "-c", "b = bytearray(200 * 2**20); import time; time.sleep(30)"])
    try:
        for _ in range(100):  # until the child has touched its 200 MiB
            pss, rss = tree_memory(me)
            if pss > alone_pss + 150 * 2**20:
                break
            time.sleep(0.1)
        assert pss > alone_pss + 150 * 2**20 and pss <= rss
    finally:
        child.kill()
        child.wait()


def test_feature_benchmark_times_each_backbone_and_both_decoding_modes(synthetic_root, tmp_path, capsys):
    from benchmarks import bench_features
    from tests.tiny_models import tiny_bert

    bert = tiny_bert(tmp_path / "bert")
    assert bench_features.main(["--data-root", str(synthetic_root), "--limit", "12", "--batch-size", "4",
                                "--text-backbone", str(bert), "--compare", "--decode-workers", "2", "--overlap",
                                "--naive",
                                "--each", f"{bert},efficientnet_lite0,no_such_backbone"]) == 0
    out = capsys.readouterr().out
    assert "inline decoding, export excluded" in out and "decoding overlapped, export excluded" in out
    assert "(2 decode thread(s))" in out or "2 decode thread(s)" in out
    assert f"backbone={bert} kind=text" in out and "backbone=efficientnet_lite0 kind=image dim=1280" in out
    assert "backbone=no_such_backbone unavailable" in out
    assert "both modalities at once (two lanes)" in out and "the pipeline's cold pass is" in out
    assert out.strip().splitlines()[-1].startswith("pairs_per_s=")
