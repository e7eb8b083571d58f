"""One new post at a time: the latency of a prediction once the model is loaded, on real data.

    python benchmarks/bench_predict.py --data-root ../shared/mvsa --posts 20

Loads the default model (the final recipe's ensemble, else the best checkpoint; or --checkpoint) and its
backbones once, then predicts --posts test posts one by one, each as a post never seen before (the feature cache
starts empty, so every encoder and side feature is computed for each post), as ``predict_test.py --image --text``
does for one post. Prints the load time and the per-post latency (median, 90th percentile, max); the last line is
``post_ms_median=<number>``. The first post is timed apart (it also warms the encoders up).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from msa import cli


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__)
    p.add_argument("--data-root", type=Path, default=Path("dataset"),
                   help="dataset root with test_without_label.txt and data/")
    p.add_argument("--checkpoint", type=Path, default=None, help="checkpoint or ensemble folder (default: "
                   "predict_test's default model)")
    p.add_argument("--posts", type=cli.positive_int, default=20, help="test posts to predict one by one")
    return p


def main(argv=None) -> int:
    from msa.data import read_index
    from msa.predict import backbones_for, default_model, load_members, member_proba

    args = build_parser().parse_args(argv)
    cli.setup_logging(False)
    ckpt = args.checkpoint or default_model()
    t0 = time.perf_counter()
    members, bias, views = load_members(ckpt)
    backbones = backbones_for(members[0][1])
    t_load = time.perf_counter() - t0
    guids = read_index(args.data_root / "test_without_label.txt", labelled=False).guids[: args.posts + 1]
    data_dir = args.data_root / "data"
    times = []
    with tempfile.TemporaryDirectory(prefix="msa-bench-post-") as cache:  # empty: every post is computed
        for guid in guids:
            t = time.perf_counter()
            member_proba(members, views, bias, [guid], data_dir, Path(cache), 1, progress=False, backbones=backbones)
            times.append(time.perf_counter() - t)
    first, rest = times[0], sorted(times[1:]) or times
    print(f"model {ckpt}: {len(members)} member(s), backbones "
          f"{', '.join(b.info.name for b in backbones if b is not None)}; loaded in {t_load:.1f}s")
    print(f"first post {1000 * first:.0f} ms (warm-up); next {len(rest)} posts one by one: median "
          f"{1000 * statistics.median(rest):.0f} ms, 90th percentile {1000 * rest[int(0.9 * (len(rest) - 1))]:.0f} ms, "
          f"max {1000 * rest[-1]:.0f} ms")
    print(f"post_ms_median={1000 * statistics.median(rest):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
