"""Head training steps per precision: milliseconds per optimiser step of the fusion heads, float32 against bf16
autocast, at several batch sizes and widths (the measurement behind ``msa.trainer.BF16_MIN_WORK``).

    python benchmarks/bench_heads.py
    python benchmarks/bench_heads.py --fusions add,cross_attention --sizes 64x256,128x512 --steps 30

Each step is what ``msa.trainer.fit`` does for one batch: forward (under ``torch.autocast("cpu", bfloat16)`` for
bf16), cross-entropy in float32, backward, gradient clipping, fused AdamW. Inputs are random tensors of MVSA's
widths (MiniLM text 384, EfficientNet-Lite0 image 1280; token fusions get --tokens text tokens per post). One
torch thread, as in a pool worker. Prints one markdown row per fusion and size; the last line is
``bf16_speedup_median=<number>``. No data needed.
"""

from __future__ import annotations

import statistics
import sys
import time

from msa import cli


def _size(text: str) -> tuple[int, int]:
    try:
        batch, hidden = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise cli.UserError(f"--sizes takes BATCHxHIDDEN items, e.g. 64x256, got {text!r}") from None
    if batch < 1 or hidden < 1:
        raise cli.UserError(f"--sizes: batch and hidden must be >= 1, got {text!r}")
    return batch, hidden


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__)
    p.add_argument("--fusions", default="add,concat,attention_add,cross_attention",
                   help="comma-separated fusions (msa.fusions.FUSIONS)")
    p.add_argument("--sizes", default="64x256,128x256,128x512,128x1024",
                   help="comma-separated BATCHxHIDDEN sizes")
    p.add_argument("--steps", type=cli.positive_int, default=20, help="optimiser steps per timing")
    p.add_argument("--repeats", type=cli.positive_int, default=3, help="timings per cell (the fastest counts)")
    p.add_argument("--tokens", type=cli.positive_int, default=24, help="text tokens per post for token fusions")
    p.add_argument("--threads", type=cli.positive_int, default=1, help="torch threads")
    return p


def step_ms(fusion: str, batch: int, hidden: int, precision: str, steps: int, repeats: int, tokens: int) -> float:
    """The fastest of ``repeats`` timings of ``steps`` steps, in ms per step (after one untimed warm-up)."""
    import torch
    import torch.nn.functional as F

    from msa.fusions import FUSIONS, ModalitySpec, MultimodalClassifier

    with_tokens = bool(getattr(FUSIONS[fusion], "requires_tokens", False))
    specs = [ModalitySpec("text", 384, with_tokens), ModalitySpec("image", 1280)]
    torch.manual_seed(0)
    model = MultimodalClassifier(specs, fusion, hidden=hidden, dropout=0.3)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
    feats = [{"text": torch.randn(batch, 384), "image": torch.randn(batch, 1280)} for _ in range(steps)]
    toks = [({"text": torch.randn(batch, tokens, 384)}, {"text": torch.ones(batch, tokens, dtype=torch.bool)})
            if with_tokens else (None, None) for _ in range(steps)]
    y = torch.randint(0, 3, (batch,))

    def run() -> None:
        model.train()
        for f, (t, m) in zip(feats, toks):
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = model(f, t, m) if with_tokens else model(f)
            loss = F.cross_entropy(out.float(), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

    run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return min(times) / steps * 1000


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from msa.backbones import native_bf16
    from msa.fusions import FUSIONS

    fusions = [f.strip() for f in args.fusions.split(",") if f.strip()]
    unknown = [f for f in fusions if f not in FUSIONS]
    if unknown or not fusions:
        raise cli.UserError(f"unknown fusion(s) {unknown}: choose from {', '.join(FUSIONS)}")
    sizes = [_size(s) for s in args.sizes.split(",") if s.strip()]
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), native bfloat16: {native_bf16()}")
    print("| fusion | batch x hidden | float32 ms/step | bf16 ms/step | speedup |")
    print("|---|---|---:|---:|---:|")
    ratios = []
    for fusion in fusions:
        for batch, hidden in sizes:
            a = step_ms(fusion, batch, hidden, "no", args.steps, args.repeats, args.tokens)
            b = step_ms(fusion, batch, hidden, "bf16", args.steps, args.repeats, args.tokens)
            ratios.append(a / b)
            print(f"| {fusion} | {batch} x {hidden} | {a:.2f} | {b:.2f} | {a / b:.2f}x |", flush=True)
    print(f"bf16_speedup_median={statistics.median(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
