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
