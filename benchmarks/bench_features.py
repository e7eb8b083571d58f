"""Feature-extraction throughput from a cold cache on real data.

    python benchmarks/bench_features.py --data-root ../shared/mvsa --limit 256

Extracts pooled text + image features of the first N labelled pairs with the default (or given) backbones
into a fresh temporary cache and prints timings; the last line is ``pairs_per_s=<number>``.

    python benchmarks/bench_features.py --data-root ../shared/mvsa --limit 128 \
        --each minilm,mpnet,efficientnet_lite0,efficientnet_lite2

``--each`` also times every listed backbone alone on the same posts (cold cache; text batches sorted by length as
in the pipeline; image batches decoded by background threads while the previous batch runs through the backbone,
as in the pipeline) and prints one ``backbone=...`` line each, so the cost of each encoder choice is visible.
``--compare`` also times the image pass in eager PyTorch and with the decoding inline (not overlapped).
``--overlap`` times both modalities at once (the pipeline's two lanes); ``--naive`` the naive loop (one post at a
time, PIL full decode, eager PyTorch float32, no cache) and the pipeline's speed-up over it.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

from msa import cli
from msa.backbones import image_backbone, text_backbone
from msa.data import read_index
from msa.features import extract_features


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__)
    p.add_argument("--data-root", type=Path, default=Path("dataset"), help="dataset root with train.txt and data/")
    p.add_argument("--limit", type=cli.positive_int, default=256, help="number of pairs")
    p.add_argument("--text-backbone", default="minilm", help="text backbone name or folder")
    p.add_argument("--image-backbone", default="efficientnet_lite0", help="image backbone name or folder")
    p.add_argument("--batch-size", type=cli.positive_int, default=32, help="batch size")
    p.add_argument("--tokens", action="store_true", help="also store token/patch sequences")
    p.add_argument("--compare", action="store_true",
                   help="also time the image backbone in eager PyTorch (no onnxruntime) and with inline decoding "
                        "(no background decode threads) in the same run")
    p.add_argument("--decode-workers", type=cli.non_negative_int, default=None,
                   help="background image-decoding threads (default: one per spare core, at most 4; 0 = inline)")
    p.add_argument("--threads", type=cli.non_negative_int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--overlap", action="store_true",
                   help="also time one cold pass of both modalities at once (text and image in two lanes, as the "
                        "pipeline extracts them) against the one-after-the-other passes above")
    p.add_argument("--naive", action="store_true",
                   help="also time the naive loop on the same posts: one post at a time, PIL decode at full size, "
                        "eager PyTorch in float32, no cache; printed with the pipeline's speed-up over it")
    p.add_argument("--each", default="", metavar="LIST",
                   help="also time each of these backbones alone (comma-separated text or image names/folders)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    guids = read_index(args.data_root / "train.txt").guids[: args.limit]
    t0 = time.perf_counter()
    tb, ib = text_backbone(args.text_backbone), image_backbone(args.image_backbone)
    t_load = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as cache:
        t_text = _timed(guids, args, tb, None, cache, tokens=args.tokens)
        if args.compare:
            _compare_image_passes(guids, args, ib, t_text)
        t_image = _timed(guids, args, None, ib, cache, tokens=args.tokens, decode_workers=args.decode_workers)
        t_warm = _timed(guids, args, tb, ib, cache, tokens=args.tokens)
    if args.overlap:
        with tempfile.TemporaryDirectory() as both_cache:
            extract_features(guids[:2], args.data_root / "data", None, ib, both_cache, batch_size=2,
                             progress=False)  # the ONNX export first, as in the separate image pass's steady state
            t_both = _timed(guids, args, tb, ib, both_cache, tokens=args.tokens)
        print(f"both modalities at once (two lanes) {t_both:.2f}s against {t_text + t_image:.2f}s one after the "
              f"other: {(t_text + t_image) / t_both:.2f}x; pairs_per_s={len(guids) / t_both:.1f}")
    if args.naive:
        _naive_loop(guids, args, t_text + t_image, t_both if args.overlap else None)
    for name in [n.strip() for n in args.each.split(",") if n.strip()]:
        _time_one_backbone(name, guids, args)
    _print_summary(len(guids), args, t_load, t_text, t_image, t_warm)
    return 0


def _timed(guids: list[str], args, tb, ib, cache, **kw) -> float:
    """Seconds of one :func:`extract_features` pass of ``guids`` (batch size from the flags, no progress bar)."""
    t = time.perf_counter()
    extract_features(guids, args.data_root / "data", tb, ib, cache, batch_size=args.batch_size, progress=False, **kw)
    return time.perf_counter() - t


@torch.inference_mode()
def _naive_loop(guids: list[str], args, t_pipeline: float, t_both: float | None) -> None:
    """--naive: what extraction costs without the pipeline: every post alone (batch 1), its image decoded by PIL at
    full size, both encoders in eager PyTorch and float32, nothing cached."""
    from msa.data import load_image
    from msa.features import model_text

    tb = text_backbone(args.text_backbone, precision="fp32")
    ib = image_backbone(args.image_backbone)
    data_dir = args.data_root / "data"
    t = time.perf_counter()
    for g in guids:
        tb(**tb.tokenize([model_text(data_dir, g)]))
        ib(ib.preprocess([load_image(data_dir, g).image]))
    dt = time.perf_counter() - t
    best = min(t_pipeline, t_both) if t_both is not None else t_pipeline
    print(f"naive loop (one post at a time, PIL full decode, eager PyTorch fp32, no cache): {dt:.2f}s "
          f"({len(guids) / dt:.1f} pairs/s); the pipeline's cold pass is {dt / best:.2f}x faster")


def _compare_image_passes(guids: list[str], args, ib, t_text: float) -> None:
    """--compare: the image pass in eager PyTorch, then in onnxruntime with inline and with overlapped decoding."""
    with tempfile.TemporaryDirectory() as eager_cache:
        t_eager = _timed(guids, args, None, ib, eager_cache, tokens=args.tokens, accelerate=False)
    print(f"image {len(guids)} in eager PyTorch {t_eager:.2f}s ({1000 * t_eager / len(guids):.1f} ms/image); "
          f"pairs_per_s without onnxruntime {len(guids) / (t_text + t_eager):.1f}")
    for workers in (0, args.decode_workers):  # decoding inline, then overlapped (as in the pipeline)
        with tempfile.TemporaryDirectory() as steady_cache:
            extract_features(guids[:2], args.data_root / "data", None, ib, steady_cache, batch_size=2,
                             progress=False)  # the ONNX export first: the timing below is the steady state
            dt = _timed(guids, args, None, ib, steady_cache, tokens=args.tokens, decode_workers=workers)
        how = "inline decoding" if workers == 0 else "decoding overlapped"
        print(f"image {len(guids)} in onnxruntime, {how}, export excluded: {dt:.2f}s "
              f"({1000 * dt / len(guids):.1f} ms/image)")


def _time_one_backbone(name: str, guids: list[str], args) -> None:
    """--each: one backbone alone on the same posts, from a cold cache; one ``backbone=...`` line."""
    from msa.backbones import IMAGE_BACKBONES, BackboneError

    try:
        is_image = name in IMAGE_BACKBONES or not _is_text(name)
        bb = image_backbone(name) if is_image else text_backbone(name)
    except BackboneError as exc:
        print(f"backbone={name} unavailable: {exc}")
        return
    with tempfile.TemporaryDirectory() as each_cache:
        dt = _timed(guids, args, None if is_image else bb, bb if is_image else None, each_cache,
                    decode_workers=args.decode_workers)
    print(f"backbone={name} kind={'image' if is_image else 'text'} dim={bb.info.dim} "
          f"ms_per_item={1000 * dt / len(guids):.1f} items_per_s={len(guids) / dt:.1f}")


def _print_summary(n: int, args, t_load: float, t_text: float, t_image: float, t_warm: float) -> None:
    from msa.features import default_decode_workers

    print(f"backbones loaded in {t_load:.1f}s; torch threads {torch.get_num_threads()}")
    print(f"text  {n} in {t_text:.2f}s ({1000 * t_text / n:.1f} ms/text)")
    workers = default_decode_workers() if args.decode_workers is None else args.decode_workers
    print(f"image {n} in onnxruntime {t_image:.2f}s ({1000 * t_image / n:.1f} ms/image; "
          f"{workers} decode thread(s))")
    print(f"warm cache reload {t_warm:.2f}s")
    print(f"pairs_per_s={n / (t_text + t_image):.1f}")


def _is_text(name: str) -> bool:
    from msa.backbones import TEXT_BACKBONES

    if name in TEXT_BACKBONES:
        return True
    folder = Path(name)
    return (folder / "tokenizer.json").is_file() or (folder / "vocab.txt").is_file() \
        or (folder / "tokenizer_config.json").is_file()


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
