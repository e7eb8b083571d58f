"""Feature-extraction throughput from a cold cache on real data.

    python benchmarks/bench_features.py --data-root ../shared/mvsa --limit 256

Extracts pooled text + image features of the first N labelled pairs with the default (or given) backbones
into a fresh temporary cache and prints timings; the last line is ``pairs_per_s=<number>``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from msa import cli  # noqa: E402
from msa.backbones import image_backbone, text_backbone  # noqa: E402
from msa.data import read_index  # noqa: E402
from msa.features import extract_features  # noqa: E402


def main(argv=None) -> int:
    p = cli.ArgumentParser(description=__doc__)
    p.add_argument("--data-root", type=Path, default=Path("dataset"), help="dataset root with train.txt and data/")
    p.add_argument("--limit", type=int, default=256, help="number of pairs")
    p.add_argument("--text-backbone", default="minilm", help="text backbone name or folder")
    p.add_argument("--image-backbone", default="efficientnet_lite0", help="image backbone name or folder")
    p.add_argument("--batch-size", type=int, default=32, help="batch size")
    p.add_argument("--tokens", action="store_true", help="also store token/patch sequences")
    p.add_argument("--compare", action="store_true",
                   help="also time the image backbone in eager PyTorch (no onnxruntime) in the same run")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    guids = read_index(args.data_root / "train.txt").guids[: args.limit]
    t0 = time.perf_counter()
    tb, ib = text_backbone(args.text_backbone), image_backbone(args.image_backbone)
    t_load = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as cache:
        t1 = time.perf_counter()
        extract_features(guids, args.data_root / "data", tb, None, cache, tokens=args.tokens,
                         batch_size=args.batch_size, progress=False)
        t_text = time.perf_counter() - t1
        if args.compare:
            with tempfile.TemporaryDirectory() as eager_cache:
                t = time.perf_counter()
                extract_features(guids, args.data_root / "data", None, ib, eager_cache, tokens=args.tokens,
                                 batch_size=args.batch_size, progress=False, accelerate=False)
                t_eager = time.perf_counter() - t
            print(f"image {len(guids)} in eager PyTorch {t_eager:.2f}s ({1000 * t_eager / len(guids):.1f} ms/image); "
                  f"pairs_per_s without onnxruntime {len(guids) / (t_text + t_eager):.1f}")
        t2 = time.perf_counter()
        extract_features(guids, args.data_root / "data", None, ib, cache, tokens=args.tokens,
                         batch_size=args.batch_size, progress=False)
        t_image = time.perf_counter() - t2
        t3 = time.perf_counter()
        extract_features(guids, args.data_root / "data", tb, ib, cache, tokens=args.tokens,
                         batch_size=args.batch_size, progress=False)
        t_warm = time.perf_counter() - t3
    total = t_text + t_image
    print(f"backbones loaded in {t_load:.1f}s; torch threads {torch.get_num_threads()}")
    print(f"text  {len(guids)} in {t_text:.2f}s ({1000 * t_text / len(guids):.1f} ms/text)")
    print(f"image {len(guids)} in onnxruntime {t_image:.2f}s ({1000 * t_image / len(guids):.1f} ms/image)")
    print(f"warm cache reload {t_warm:.2f}s")
    print(f"pairs_per_s={len(guids) / total:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
