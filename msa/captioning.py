"""Image captioners for phase 4: an offline ImageNet-class describer and an OpenAI-compatible VLM client.

Both implement :class:`Captioner`: ``caption([(guid, image_path_or_None), ...]) -> [CaptionResult, ...]``,
one result per item, in order. A captioner never raises for one bad item; it returns ``caption=None`` with
``error`` set.

:class:`OpenAICaptioner` talks to any OpenAI-compatible chat endpoint that accepts ``image_url`` data URIs
(Qwen-VL on DashScope, vLLM, Ollama, OpenAI). It downscales each image before base64, runs a bounded number of
requests at a time, retries 429 (honouring ``Retry-After``), 5xx, timeouts and connection errors with
exponential backoff and jitter, and keeps a persistent cache (one JSON file per answer, keyed by
sha256(model, prompt, original image bytes)) written as each answer arrives, so an interrupted run resumes and a
rerun only asks for what is missing. Failures go to a JSONL file and are never cached. The API key is never
written anywhere: every error text recorded or logged is scrubbed of it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

from PIL import Image, ImageOps

from msa.cli import redact, url_secrets
from msa.data import MAX_IMAGE_BYTES, find_image, read_capped, to_rgb
from msa.io import write_json

log = logging.getLogger(__name__)

DEFAULT_PROMPT = ("Describe this image objectively in one or two sentences: the objects, people, setting and any "
                  "visible text. Do not judge or use sentiment words.")
#: Environment variables read by :func:`resolve_api_key`, in order.
API_KEY_ENV = ("VLM_API_KEY", "DASHSCOPE_API_KEY", "OPENAI_API_KEY")
#: Lower-cased answer openings that mean the model declined to describe the image.
REFUSAL_PREFIXES = ("i'm sorry", "i’m sorry", "i am sorry", "sorry,", "i cannot", "i can't", "i can’t",
                    "i am unable", "i'm unable", "i’m unable", "i apologize", "as an ai")
CACHE_VERSION = 1


@dataclass
class CaptionResult:
    guid: str
    caption: str | None
    source: str  # "cache" | "api" | "offline"
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.caption is not None


class Captioner(Protocol):
    name: str

    def caption(self, items: list[tuple[str, Path | None]]) -> list[CaptionResult]: ...


def resolve_api_key(constant: str = "") -> str:
    """The API key: $VLM_API_KEY, then $DASHSCOPE_API_KEY, then $OPENAI_API_KEY, then ``constant``; "" if none."""
    for var in API_KEY_ENV:
        value = os.environ.get(var, "").strip()
        if value:
            return value
    return (constant or "").strip()


def items_from_data_dir(data_dir: str | Path, guids: Sequence[str]) -> list[tuple[str, Path | None]]:
    """``(guid, image path or None)`` for each guid, found as :func:`msa.data.find_image` finds it."""
    return [(g, find_image(data_dir, g)) for g in guids]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _read_bytes(path: Path | None) -> bytes | str:
    """A file's bytes (at most MAX_IMAGE_BYTES), or a reason string when there are none."""
    if path is None:
        return "no image"
    try:
        data, _ = read_capped(path, MAX_IMAGE_BYTES)
    except Exception as exc:  # noqa: BLE001 - a bad file is one failure, never a crash
        return f"no image ({Path(path).name}: {type(exc).__name__}: {str(exc)[:150]})"
    return data if data else f"no image ({Path(path).name} is empty)"


def _decode(data: bytes, path: Path | None) -> Image.Image | str:
    """The RGB image (EXIF orientation applied) of a file's bytes, or a reason string."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except Exception as exc:  # noqa: BLE001 - a bad file is one failure, never a crash
        return f"no image ({Path(path).name if path else 'image'}: {type(exc).__name__}: {str(exc)[:150]})"


# ---------------------------------------------------------------------------------------------- offline
class ImageNetCaptioner:
    """Describes each image by the image backbone's top-k ImageNet classes: no network, no key.

    A missing or unreadable image is a failure (``caption=None``, ``error`` starting with "no image"); no caption
    is invented for the grey placeholder.
    """

    name = "imagenet"

    def __init__(self, image_backbone, top_k: int = 3, batch_size: int = 32, cache_dir: Path | None = None,
                 onnx_dir: Path | None = None):
        if not getattr(image_backbone, "class_names", None):
            log.warning("image backbone has no class names; captions will list class indices")
        self.backbone = image_backbone
        self.top_k = int(top_k)
        self.batch_size = max(1, int(batch_size))
        #: optional folder of one JSON file per (backbone, top_k, image bytes), so reruns decode nothing twice
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        #: the feature cache whose ONNX export of the backbone classifies (msa.onnx_accel; None: PyTorch)
        self.onnx_dir = Path(onnx_dir) if onnx_dir is not None else None
        self.computed = 0

    @staticmethod
    def describe(labels: Sequence[str]) -> str:
        names = [str(n).replace("_", " ").strip() for n in labels if str(n).strip()]
        return "a photo showing: " + ", ".join(names)

    def cache_key(self, image_bytes: bytes) -> str:
        info = getattr(self.backbone, "info", None)
        tag = info.key() if info is not None and hasattr(info, "key") else type(self.backbone).__name__
        h = hashlib.sha256(f"imagenet|{tag}|top{self.top_k}|".encode())
        h.update(image_bytes)
        return h.hexdigest()

    def _cache_get(self, key: str) -> str | None:
        if self.cache_dir is None:
            return None
        path = self.cache_dir / f"{key}.json"
        try:
            caption = json.loads(path.read_text(encoding="utf-8")).get("caption")
            return caption if isinstance(caption, str) and caption.strip() else None
        except (OSError, ValueError, AttributeError):
            return None

    def caption(self, items: list[tuple[str, Path | None]]) -> list[CaptionResult]:
        """One result per item, in order. The cache is looked up by each file's bytes; only the images it lacks
        are decoded, one batch at a time (decoding all of phase 4's ~1,000 hard posts first held ~1 GB)."""
        import torch
        from tqdm.auto import tqdm

        results: list[CaptionResult | None] = [None] * len(items)
        pending: list[tuple[int, bytes, str]] = []  # (item, file bytes, cache key): to classify
        for i, (guid, path) in enumerate(items):
            got = _read_bytes(path)
            if isinstance(got, str):
                results[i] = CaptionResult(guid, None, "offline", got)
                continue
            key = self.cache_key(got)
            cached = self._cache_get(key)
            if cached is not None:
                results[i] = CaptionResult(guid, cached, "cache")
            else:
                pending.append((i, got, key))
        try:
            device = next(self.backbone.parameters()).device
        except (StopIteration, AttributeError):
            device = torch.device("cpu")
        top_classes = self._top_classes(bool(pending))

        def classify(chunk: list[tuple[int, Image.Image, str]], top_classes) -> None:
            pixels = self.backbone.preprocess([img for _, img, _ in chunk]).to(device)
            for (i, _, key), top in zip(chunk, top_classes(pixels)):
                text = self.describe([name for name, _ in top])
                results[i] = CaptionResult(items[i][0], text, "offline")
                if self.cache_dir is not None:
                    write_json(self.cache_dir / f"{key}.json", {"version": CACHE_VERSION, "guid": items[i][0],
                                                                 "caption": text, "created": _now()})
            self.computed += len(chunk)

        with tqdm(total=len(pending), desc="captions (imagenet classes)", unit="img", disable=None) as bar:
            chunk: list[tuple[int, Image.Image, str]] = []
            for n, (i, data, key) in enumerate(pending, 1):
                got = _decode(data, items[i][1])
                if isinstance(got, str):  # the batches hold decodable images only, as before
                    results[i] = CaptionResult(items[i][0], None, "offline", got)
                else:
                    chunk.append((i, got, key))
                if len(chunk) == self.batch_size or (n == len(pending) and chunk):
                    classify(chunk, top_classes)
                    chunk = []
                bar.update(1)
        # the ONNX session (its arena) goes now, not with the process: phase 4 fine-tunes next
        del top_classes
        from msa.features import malloc_trim

        malloc_trim()
        return [r for r in results if r is not None]

    def _top_classes(self, needed: bool):
        """``pixels -> top-k (name, p) per image``: through the backbone's ONNX export and its own classifier
        head when it has both (2.3x faster here; the same top-3 names as PyTorch on all 3,385 MVSA images),
        else the backbone's :meth:`top_classes`."""
        eager = lambda pixels: self.backbone.top_classes(pixels, self.top_k)  # noqa: E731
        if not needed or self.onnx_dir is None or not hasattr(self.backbone, "head_logits"):
            return eager
        import torch

        from msa.onnx_accel import fast_image_forward

        # a session of its own (not the process's shared one), freed with this function after the captions
        forward = fast_image_forward(self.backbone, self.onnx_dir, reuse=False)
        if isinstance(forward, torch.nn.Module):
            return eager  # the backbone itself: no onnxruntime here, or not a CNN on the CPU

        def via_onnx(pixels):
            with torch.no_grad():
                logits = self.backbone.head_logits(forward(pixels)[0])
            return eager(pixels) if logits is None else self.backbone.top_of_logits(logits, self.top_k)

        return via_onnx


# ---------------------------------------------------------------------------------------------- OpenAI
class _Failure(Exception):
    """A non-retryable outcome of one request: recorded, never cached."""


class OpenAICaptioner:
    """Captions through an OpenAI-compatible ``chat.completions`` endpoint, with cache, retries and failure log."""

    name = "openai"

    def __init__(self, base_url: str, model: str, prompt: str, api_key: str, cache_dir: Path, failures_path: Path,
                 concurrency: int = 4, timeout: float = 60.0, max_retries: int = 5, max_side: int = 768,
                 progress: bool = True, *, backoff_base: float = 1.0, max_backoff: float = 30.0,
                 max_retry_after: float = 60.0, jpeg_quality: int = 85, max_tokens: int = 200,
                 sleep: Callable[[float], None] = time.sleep):
        self.base_url = base_url
        self.model = model
        self.prompt = prompt
        self._api_key = api_key or ""
        self.cache_dir = Path(cache_dir)
        self.failures_path = Path(failures_path)
        self.concurrency = max(1, int(concurrency))
        self.timeout = float(timeout)
        self.max_retries = max(0, int(max_retries))
        self.max_side = int(max_side)
        self.progress = progress
        self.backoff_base = float(backoff_base)
        self.max_backoff = float(max_backoff)
        self.max_retry_after = float(max_retry_after)
        self.jpeg_quality = int(jpeg_quality)
        self.max_tokens = int(max_tokens)
        self._sleep = sleep
        self._lock = threading.Lock()
        self._client = None

    def __repr__(self) -> str:  # never shows the key, not even one inside the URL
        return f"OpenAICaptioner(base_url={redact(self.base_url)!r}, model={self.model!r})"

    # ---- helpers
    def scrub(self, text: object) -> str:
        """``text`` with the API key, and any credential inside a URL, replaced by ``***``."""
        text = str(text)
        for secret in sorted({self._api_key, *url_secrets(self.base_url)}, key=len, reverse=True):
            if secret and len(secret) >= 4:
                text = text.replace(secret, "***")
        return redact(text)

    def cache_key(self, image_bytes: bytes) -> str:
        h = hashlib.sha256()
        for part in (self.model.encode("utf-8"), self.prompt.encode("utf-8")):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
        h.update(image_bytes)
        return h.hexdigest()

    def cache_path(self, key: str) -> Path:
        return self.cache_dir / f"{key}.json"

    def _cache_get(self, key: str) -> str | None:
        path = self.cache_path(key)
        if not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            caption = entry.get("caption") if isinstance(entry, dict) else None
            if entry.get("model") != self.model or not isinstance(caption, str) or not caption.strip():
                raise ValueError("incomplete entry")
            return caption
        except Exception as exc:  # noqa: BLE001 - a corrupt entry is simply asked again
            log.warning("ignoring corrupt caption cache entry %s (%s)", path.name, type(exc).__name__)
            return None

    def _cache_put(self, key: str, guid: str, caption: str) -> None:
        write_json(self.cache_path(key), {"version": CACHE_VERSION, "model": self.model,
                                          "prompt_sha256": hashlib.sha256(self.prompt.encode()).hexdigest(),
                                          "guid": guid, "caption": caption, "created": _now()})

    def _record_failure(self, guid: str, reason: str) -> None:
        reason = self.scrub(reason)
        log.warning("caption failed for %s: %s", guid, reason)
        line = json.dumps({"guid": guid, "reason": reason, "model": self.model, "time": _now()},
                          ensure_ascii=False)
        with self._lock:
            self.failures_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.failures_path, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")

    def encode_image(self, img: Image.Image) -> str:
        """Downscale so the longer side is at most ``max_side``, re-encode as JPEG, return a data URI."""
        img = to_rgb(img)
        if max(img.size) > self.max_side:
            img = img.copy()
            img.thumbnail((self.max_side, self.max_side), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=self.jpeg_quality)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")

    def _get_client(self):
        with self._lock:
            if self._client is None:
                from openai import OpenAI

                self._client = OpenAI(base_url=self.base_url, api_key=self._api_key or "EMPTY",
                                      timeout=self.timeout, max_retries=0)
            return self._client

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        delay = min(self.backoff_base * (2 ** attempt), self.max_backoff)
        return delay * (0.5 + random.random() / 2)

    @staticmethod
    def _retry_after(exc) -> float | None:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
        if headers is None:
            return None
        value = headers.get("retry-after")
        try:
            return float(value) if value is not None else None
        except (TypeError, ValueError):
            return None

    def _parse(self, response) -> str:
        try:
            choice = response.choices[0]
            content = choice.message.content
        except (AttributeError, IndexError, TypeError) as exc:
            raise _Failure(f"malformed response ({type(exc).__name__})") from None
        if getattr(choice, "finish_reason", None) == "content_filter":
            raise _Failure("content filtered")
        if not isinstance(content, str):
            raise _Failure("empty content" if content is None else "malformed response (content is not text)")
        content = " ".join(content.split())
        if not content:
            raise _Failure("empty content")
        if content.lower().startswith(REFUSAL_PREFIXES):
            raise _Failure(f"refusal: {content[:120]}")
        return content

    def _request(self, data_uri: str) -> str:
        """One caption with retries; raises :class:`_Failure` with a scrubbed reason."""
        import openai

        client = self._get_client()
        messages = [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_uri}},
            {"type": "text", "text": self.prompt},
        ]}]
        last = ""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                response = client.chat.completions.create(model=self.model, messages=messages,
                                                          max_tokens=self.max_tokens)
                return self._parse(response)
            except _Failure:
                raise
            except openai.APITimeoutError:
                last = "timeout"
            except openai.APIConnectionError as exc:
                last = f"connection error: {type(exc.__cause__ or exc).__name__}"
            except openai.APIStatusError as exc:
                status = exc.status_code
                if status == 429:
                    last, retry_after = "HTTP 429", self._retry_after(exc)
                elif status >= 500:
                    last = f"HTTP {status}"
                else:
                    raise _Failure(f"HTTP {status}: {self.scrub(exc.message)[:300]}") from None
            except openai.APIResponseValidationError as exc:
                raise _Failure(f"malformed response: {self.scrub(exc)[:200]}") from None
            except Exception as exc:  # noqa: BLE001 - e.g. a body that is not JSON
                raise _Failure(f"malformed response: {type(exc).__name__}: {self.scrub(exc)[:200]}") from None
            if attempt < self.max_retries:
                delay = self._backoff(attempt, retry_after)
                log.info("caption request: %s; retry %d/%d in %.1f s", last, attempt + 1, self.max_retries, delay)
                self._sleep(delay)
        raise _Failure(f"retries exhausted after {self.max_retries + 1} attempts: {last}")

    def _work(self, key: str, guid: str, data: bytes, path: Path | None) -> tuple[str | None, str | None]:
        img = _decode(data, path)  # here, so at most --vlm-concurrency images are decoded at once
        if isinstance(img, str):
            self._record_failure(guid, img)
            return None, img
        try:
            caption = self._request(self.encode_image(img))
        except _Failure as exc:
            reason = self.scrub(exc)
            self._record_failure(guid, reason)
            return None, reason
        self._cache_put(key, guid, caption)
        return caption, None

    # ---- the interface
    def caption(self, items: list[tuple[str, Path | None]]) -> list[CaptionResult]:
        from tqdm.auto import tqdm

        results: list[CaptionResult | None] = [None] * len(items)
        # cache key -> (guid, file bytes, path, item indices); decoded by the worker that sends it
        pending: dict[str, tuple[str, bytes, Path | None, list[int]]] = {}
        for i, (guid, path) in enumerate(items):
            got = _read_bytes(path)
            if isinstance(got, str):
                self._record_failure(guid, got)
                results[i] = CaptionResult(guid, None, "api", got)
                continue
            key = self.cache_key(got)
            cached = self._cache_get(key)
            if cached is not None:
                results[i] = CaptionResult(guid, cached, "cache")
            elif key in pending:  # same image bytes twice: ask once
                pending[key][3].append(i)
            else:
                pending[key] = (guid, got, path, [i])
        if pending:
            log.info("captioning %d image(s) with %s (%d cached)", len(pending), self.model,
                     sum(r is not None and r.source == "cache" for r in results))
            with ThreadPoolExecutor(max_workers=self.concurrency) as pool, \
                    tqdm(total=len(pending), desc=f"captions ({self.model})", unit="img",
                         disable=None if self.progress else True) as bar:
                futures = {pool.submit(self._work, key, guid, data, path): idx
                           for key, (guid, data, path, idx) in pending.items()}
                try:
                    for fut in as_completed(futures):
                        caption, error = fut.result()
                        for i in futures[fut]:
                            results[i] = CaptionResult(items[i][0], caption, "api", error)
                        bar.update(1)
                except BaseException:
                    for fut in futures:
                        fut.cancel()
                    raise
        return [r for r in results if r is not None]


# ------------------------------------------------------------------------------------- command-line flags
#: the captioners ``--captioner`` chooses from (phase 4): offline ImageNet class names, or an OpenAI-compatible VLM
CAPTIONERS = ("imagenet", "openai")
#: DashScope's OpenAI-compatible endpoint (Qwen-VL); any other compatible base URL works
DEFAULT_VLM_BASE_URL = "https://dashscope.aliyuncs.com/compatible-mode/v1"
DEFAULT_VLM_MODEL = "qwen-vl-plus"


def add_captioner_args(p) -> None:
    from msa import cli

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
    from msa import cli

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
                                 cache_dir=Path(args.caption_cache) / f"imagenet-{key}",
                                 onnx_dir=getattr(args, "cache_dir", None))
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
