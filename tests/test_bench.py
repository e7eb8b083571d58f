"""The pipeline benchmark's memory probe: PSS counts shared pages once, so it never exceeds RSS, and a child
process's memory is included."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from benchmarks.bench_pipeline import PSS_EVERY_S, PSS_STEP, PeakProbe, tree_memory


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


def test_the_probe_reads_pss_on_new_highs_and_now_and_then_not_at_every_poll_of_a_plateau():
    """A step that grows to 3 GiB and stays there 60 s, polled 5 times a second: the PSS (~50 ms a reading of
    a process that size) is read about once per PSS_STEP of growth and every PSS_EVERY_S seconds."""
    probe, now, rss = PeakProbe(), 0.0, 100 * 2**20
    plateau_reads = 0
    while now < 80:
        if now < 20:
            rss += 30 * 2**20  # growing 150 MiB/s
        if probe.due(rss, now):
            probe.read(int(rss * 0.8), rss, now)
            plateau_reads += now >= 20
        now += 0.2
    assert probe.peak_rss == rss and probe.peak_pss == int(rss * 0.8)
    assert probe.reads - plateau_reads <= (rss - 100 * 2**20) / PSS_STEP + 20 / PSS_EVERY_S + 1
    # the former probe read it at every poll of the plateau: 300 times
    assert plateau_reads <= 60 / PSS_EVERY_S + 1


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


def test_the_heads_benchmark_times_both_precisions_and_refuses_a_bad_size(capsys):
    import pytest

    from benchmarks import bench_heads
    from msa.cli import UserError

    assert bench_heads.main(["--fusions", "add,cross_attention", "--sizes", "8x16", "--steps", "2", "--repeats", "1",
                             "--tokens", "3"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| add |") or line.startswith("| cross_attention |")]
    assert len(rows) == 2 and all(float(r.split("|")[3]) > 0 and float(r.split("|")[4]) > 0 for r in rows)
    assert out.strip().splitlines()[-1].startswith("bf16_speedup_median=")
    with pytest.raises(UserError, match="BATCHxHIDDEN"):
        bench_heads.main(["--sizes", "64by256"])
    with pytest.raises(UserError, match="unknown fusion"):
        bench_heads.main(["--fusions", "nope"])
