"""Phase 4's captioners and its hard-sample figure: thin wrappers over :mod:`msa.captioning` and :mod:`msa.plots`.

``--captioner imagenet`` (offline default) names the image backbone's top ImageNet classes; ``--captioner openai``
asks any OpenAI-compatible chat endpoint that takes images (Qwen-VL through DashScope's compatible mode, vLLM,
Ollama, OpenAI). The client code (cache, retries, failures file, key scrubbing) lives in msa/captioning.py.
"""

from __future__ import annotations

import logging
import textwrap
import warnings
from pathlib import Path

from msa import cli

log = logging.getLogger("phase4")

CAPTIONERS = ("imagenet", "openai")
#: DashScope's OpenAI-compatible endpoint (Qwen-VL); any other compatible base URL works
DEFAULT_VLM_BASE_URL = "https://dashscope.aliyuncs.com/compatible-mode/v1"
DEFAULT_VLM_MODEL = "qwen-vl-plus"


def add_captioner_args(p) -> None:
    from msa.captioning import API_KEY_ENV, DEFAULT_PROMPT

    g = p.add_argument_group("captioner", "  the API key comes from $" + ", $".join(API_KEY_ENV)
                             + " or API_KEY at the top of phase4/run_phase4.py; it is never written anywhere")
    g.add_argument("--captioner", default="imagenet", choices=CAPTIONERS,
                   help="imagenet: offline, the image backbone's top ImageNet classes; openai: an "
                        "OpenAI-compatible vision-language chat endpoint")
    g.add_argument("--top-k", type=cli.positive_int, default=3, help="imagenet captioner: how many class names")
    g.add_argument("--vlm-base-url", default=DEFAULT_VLM_BASE_URL,
                   help="openai captioner: base URL of the chat-completions API (DashScope: "
                        f"{DEFAULT_VLM_BASE_URL}; vLLM/Ollama: e.g. http://127.0.0.1:8000/v1)")
    g.add_argument("--vlm-model", default=DEFAULT_VLM_MODEL,
                   help="openai captioner: model name (qwen-vl-plus, qwen-vl-max, gpt-4o-mini, ...)")
    g.add_argument("--vlm-prompt", default=DEFAULT_PROMPT, help="openai captioner: the instruction sent with each "
                   "image (default: an objective description without sentiment words)")
    g.add_argument("--vlm-concurrency", type=cli.positive_int, default=4,
                   help="openai captioner: requests in flight at once")
    g.add_argument("--vlm-timeout", type=cli.positive_float, default=60.0, help="openai captioner: seconds per request")
    g.add_argument("--vlm-max-retries", type=cli.non_negative_int, default=5,
                   help="openai captioner: retries of 429 (honouring Retry-After), 5xx, timeouts, connection errors")
    g.add_argument("--vlm-max-side", type=cli.positive_int, default=768,
                   help="openai captioner: images are downscaled to this longest side and re-encoded as JPEG")
    g.add_argument("--caption-cache", type=Path, default=cli.CACHE_ROOT / "captions",
                   help="caption cache folder (one JSON file per model, prompt and image)")


def build_captioner(args, image_backbone, api_key_constant: str, failures_path: Path):
    """The captioner the flags ask for."""
    from msa.captioning import API_KEY_ENV, ImageNetCaptioner, OpenAICaptioner, resolve_api_key

    if args.captioner == "imagenet":
        from PIL import Image

        from msa.backbones import BackboneError

        if args.top_k < 1:
            raise cli.UserError(f"--top-k must be >= 1, got {args.top_k}")
        try:
            image_backbone.top_classes(image_backbone.preprocess([Image.new("RGB", (64, 64))]), 1)
        except BackboneError as exc:
            raise cli.UserError(f"--captioner imagenet names the image backbone's classes, but {exc}: use an "
                                "image backbone with a classifier (the default efficientnet_lite0) or "
                                "--captioner openai") from None
        if not getattr(image_backbone, "class_names", None):
            log.warning("the image backbone has no class names: imagenet captions will list class indices")
        key = image_backbone.info.key() if hasattr(image_backbone, "info") else "image"
        return ImageNetCaptioner(image_backbone, top_k=args.top_k,
                                 cache_dir=Path(args.caption_cache) / f"imagenet-{key}")
    key = resolve_api_key(api_key_constant)
    if not key:
        raise cli.UserError("--captioner openai needs an API key: set VLM_API_KEY (or "
                            + " / ".join(API_KEY_ENV[1:]) + ") or edit API_KEY at the top of phase4/run_phase4.py; "
                            "a local server without authentication takes VLM_API_KEY=EMPTY")
    if args.vlm_concurrency < 1 or args.vlm_timeout <= 0 or args.vlm_max_side < 32:
        raise cli.UserError("--vlm-concurrency must be >= 1, --vlm-timeout > 0 and --vlm-max-side >= 32")
    return OpenAICaptioner(args.vlm_base_url, args.vlm_model, args.vlm_prompt, key,
                           cache_dir=Path(args.caption_cache) / "openai", failures_path=failures_path,
                           concurrency=args.vlm_concurrency, timeout=args.vlm_timeout,
                           max_retries=args.vlm_max_retries, max_side=args.vlm_max_side)


def hard_samples_figure(samples, data_dir: Path, path: Path, title: str = "", ncols: int = 3) -> Path:
    """A few hard samples: the image, true and predicted label, the post's text and its caption.

    ``samples``: rows with ``guid``, ``label``, ``pred``, ``p_true``, ``reason``, ``caption``."""
    from msa.data import load_image
    from msa.io import save_figure
    from msa.plots import pyplot

    plt = pyplot()
    samples = list(samples)
    ncols = max(1, min(ncols, len(samples)))
    nrows = max(1, -(-len(samples) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 5.4 * nrows), squeeze=False)
    for ax, s in zip(axes.flat, samples):
        img = load_image(data_dir, s["guid"], draft_size=(320, 320)).image.copy()
        img.thumbnail((320, 320))
        ax.imshow(img)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{s['guid']}: true {s['label']}, predicted {s['pred']}\n(p true {s['p_true']:.2f}; "
                     f"{s['reason']})", fontsize=8)
        text = textwrap.shorten(" ".join(str(s.get("text", "")).split()), 150, placeholder=" ...")
        cap = textwrap.shorten(" ".join(str(s.get("caption", "")).split()), 200, placeholder=" ...")
        ax.set_xlabel("text: " + "\n".join(textwrap.wrap(text, 52)) + "\n\ncaption: "
                      + "\n".join(textwrap.wrap(cap, 52)), fontsize=7.5, loc="left")
    for ax in axes.flat[len(samples):]:
        ax.set_visible(False)
    fig.suptitle(title)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font")
        fig.tight_layout()
    out = save_figure(fig, path)
    plt.close(fig)
    return out
