"""Frozen-backbone feature cache.

With frozen backbones the expensive part of every experiment is a pure function of (backbone, input), so it
is computed once and stored::

    <cache>/<backbone key>/<hh>/<content sha256>.safetensors       pooled vector  (D,)        float32
    <cache>/<backbone key>/<hh>/<content sha256>.tok.safetensors   token/patch sequence (L, D) float16

The backbone key (:meth:`msa.backbones.BackboneInfo.key`) covers the backbone's identity, its weights hash
and its preprocessing, plus the text normalisation options for text backbones. The content hash is the
sha256 of the exact string given to the text model, or of the image file's bytes, so a changed file or
backbone recomputes only what changed. Every entry is written atomically and carries its own key in its
metadata; an entry that does not load, or whose metadata or shape is wrong, is recomputed, never used.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from msa.cli import FEATURE_CACHE_DIR, UserError
from msa.data import (
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    check_data_dir,
    load_image,
    normalize_text,
    read_capped,
    read_text,
    validate_guid,
)
from msa.io import atomic_path
from msa.workers import cores as _cores  # a module attribute, so the tests can pretend a core count

log = logging.getLogger(__name__)

CACHE_VERSION = "1"
DEFAULT_CACHE_DIR = FEATURE_CACHE_DIR
PLACEHOLDER_KEY = "placeholder-image-v1"
TEXT_NORMALISATION = {"url_token": "", "mention_token": "@user", "drop_rt": True, "split_hashtags": True,
                      "emoji_words": True}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class FeatureSet:
    """Features of ``guids`` in order: ``pooled[m]`` is (N, D_m); ``tokens[m]`` a list of (L_i, D_m) tensors."""

    guids: list[str]
    pooled: dict[str, torch.Tensor] = field(default_factory=dict)
    tokens: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    backbones: dict[str, dict] = field(default_factory=dict)  # modality -> BackboneInfo as a dict
    stats: dict[str, dict] = field(default_factory=dict)  # modality -> {"hits": n, "computed": n, "corrupt": n}

    def pack_tokens(self) -> dict[str, torch.Tensor]:
        """Put each modality's token sequences into one tensor, the list then holding views of it (the same
        values); returns those tensors. Sent to a worker process, a FeatureSet then shares one storage per
        modality, not one per post: a fork server passes at most 256 file descriptors to a new process
        (multiprocessing's MAXFDS_TO_SEND), and the posts' sequences are thousands."""
        flats = self.__dict__.setdefault("_flat_tokens", {})
        for m, seqs in self.tokens.items():
            flat = flats.get(m)
            if not seqs:
                flats.pop(m, None)
                continue
            if flat is not None and int(flat.shape[0]) == sum(int(t.shape[0]) for t in seqs) and all(
                    t.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr() for t in seqs):
                continue  # still the views of it
            flats[m] = flat = torch.cat(seqs)
            self.tokens[m] = list(flat.split([int(t.shape[0]) for t in seqs]))
        return {m: flats[m] for m in self.tokens if m in flats}

    def __getstate__(self) -> dict:
        """Pickled with each modality's token sequences as one tensor and their lengths (see :meth:`pack_tokens`)."""
        flats = self.pack_tokens()
        state = {k: v for k, v in self.__dict__.items() if k != "_flat_tokens"}
        state["tokens"] = {m: (flats.get(m), [int(t.shape[0]) for t in seqs]) for m, seqs in self.tokens.items()}
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        state["tokens"] = {m: [] if flat is None else list(flat.split(lengths))
                           for m, (flat, lengths) in state["tokens"].items()}
        self.__dict__.update(state)

    def padded_tokens(self, modality: str, idx: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad the token sequences of rows ``idx`` into (B, L, D) float32 with a bool mask (B, L)."""
        seqs = self.tokens[modality]
        return pad_sequences([seqs[i] for i in (range(len(seqs)) if idx is None else idx)])


def pad_sequences(seqs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_i, D) tensors -> zero-padded (B, L, D) float32 and a bool mask (B, L), L = max(1, longest).

    ``torch.nn.utils.rnn.pad_sequence`` copies the rows in one call: the same tensors as a Python loop of slice
    assignments, ~2.6x faster for a batch of 64 texts (the training loop pads every token batch)."""
    seqs = list(seqs)
    lengths = torch.tensor([int(s.shape[0]) for s in seqs], dtype=torch.long)
    x = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True)
    if x.shape[1] == 0:
        x = x.new_zeros(len(seqs), 1, x.shape[2])
    mask = torch.arange(x.shape[1]) < lengths[:, None]
    return x.float(), mask


class FeatureStore:
    """One backbone's folder of cached entries."""

    def __init__(self, root: str | Path, backbone_key: str, dim: int):
        self.dir = Path(root) / backbone_key
        self.backbone_key = backbone_key
        self.dim = dim
        self.corrupt = 0

    def path(self, key: str, kind: str = "pooled") -> Path:
        suffix = ".safetensors" if kind == "pooled" else ".tok.safetensors"
        return self.dir / key[:2] / f"{key}{suffix}"

    def load(self, key: str, kind: str = "pooled") -> torch.Tensor | None:
        """The cached tensor, or ``None`` when absent or unusable (corrupt entries are removed)."""
        path = self.path(key, kind)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                tensor = fh.get_tensor(kind)
            ok = (meta.get("key") == key and meta.get("backbone") == self.backbone_key
                  and meta.get("version") == CACHE_VERSION and tensor.shape[-1] == self.dim
                  and tensor.dim() == (1 if kind == "pooled" else 2) and bool(torch.isfinite(tensor).all()))
        except Exception as exc:  # noqa: BLE001 - any unreadable entry is recomputed
            log.debug("cache entry %s unreadable: %s", path, exc)
            ok, tensor = False, None
        if not ok:
            self.corrupt += 1
            log.warning("corrupt cache entry %s: recomputing it", path)
            path.unlink(missing_ok=True)
            return None
        return tensor

    def save(self, key: str, tensor: torch.Tensor, kind: str = "pooled") -> None:
        path = self.path(key, kind)
        meta = {"key": key, "backbone": self.backbone_key, "version": CACHE_VERSION}
        with atomic_path(path, durable=False) as tmp:  # load() checks every entry and recomputes a bad one
            save_file({kind: tensor.contiguous()}, str(tmp), metadata=meta)


def _text_store_key(info) -> str:
    norm = _sha(json.dumps(TEXT_NORMALISATION, sort_keys=True).encode())[:8]
    return f"{info.key()}-n{norm}"


def model_text(data_dir: Path, guid: str) -> str:
    """The exact string the text backbone sees for ``guid`` (empty for a missing/empty text)."""
    res = read_text(data_dir, guid)
    return normalize_text(res.raw, **TEXT_NORMALISATION) if res.ok else ""


def image_content_key(data_dir: Path, guid: str) -> tuple[str, bytes | None]:
    """(sha256 of the image file, its bytes), or the placeholder key when there is no readable file."""
    from msa.data import find_image

    if validate_guid(guid):
        return PLACEHOLDER_KEY, None
    path = find_image(data_dir, guid)
    if path is None:
        return PLACEHOLDER_KEY, None
    try:
        data, _ = read_capped(path, MAX_IMAGE_BYTES)
    except OSError:  # unreadable, not a regular file, or over the size cap: the placeholder, as load_image says
        return PLACEHOLDER_KEY, None
    return (_sha(data), data) if data else (PLACEHOLDER_KEY, None)


def _decode(data_dir: Path, guid: str, data: bytes | None, size: int) -> Image.Image:
    """Decode for the backbone: JPEG at a reduced scale (still >= size), placeholders for broken files."""
    if data is not None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused just below
                img = Image.open(io.BytesIO(data))
            if img.size[0] * img.size[1] > MAX_IMAGE_PIXELS:
                img = None  # a decompression bomb: the robust loader below gives the placeholder, as phase 0 says
            elif img.format == "JPEG" and img.mode in ("RGB", "L", "YCbCr"):
                img.draft("RGB", (size, size))
        except Exception:  # noqa: BLE001 - the robust loader below reports the reason
            img = None
        if img is not None:
            try:
                from PIL import ImageOps

                from msa.data import to_rgb

                img.load()
                return to_rgb(ImageOps.exif_transpose(img))
            except Exception:  # noqa: BLE001
                pass
    return load_image(data_dir, guid).image


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _lookup(store: FeatureStore, keys: list[str], tokens: bool):
    """Cached entries per row, and the rows still to compute grouped by content key (each key computed once)."""
    pooled: list[torch.Tensor | None] = [None] * len(keys)
    toks: list[torch.Tensor | None] = [None] * len(keys)
    unique: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        pooled[i] = store.load(key)
        if tokens and pooled[i] is not None:
            toks[i] = store.load(key, "tokens")
        if pooled[i] is None or (tokens and toks[i] is None):
            unique.setdefault(key, []).append(i)
    return pooled, toks, unique


def _keep(store: FeatureStore, key: str, rows: list[int], vec: torch.Tensor, seq: torch.Tensor | None,
          pooled: list, toks: list | None) -> None:
    """Cache ``vec`` (and ``seq``) under ``key`` and fill ``rows`` of the results (``toks`` None: tokens are cached
    for a later stage but not returned)."""
    store.save(key, vec)
    if seq is not None:
        store.save(key, seq, "tokens")
    for i in rows:
        pooled[i] = vec
        if toks is not None:
            toks[i] = seq


@dataclass
class _Plan:
    """One modality's extraction: the rows' results so far, the keys still to compute in batches, and how to
    compute (``run(batch) -> (pooled, tokens-or-None)`` per key) and keep them."""

    pooled: list
    toks: list | None
    chunks: list[list[str]]
    run: object
    keep: object
    bar: object
    count: int
    encode: object = None  # text: chunk -> tokenised batch
    prepare: object = None  # image: chunk -> preprocessed pixels
    forward_for: object = None  # image: threads -> forward function


def _text_plan(backbone, texts: list[str], store: FeatureStore, keys: list[str], tokens: bool, batch_size: int,
               progress: bool) -> _Plan:
    pooled, toks, unique = _lookup(store, keys, tokens)
    order = sorted(unique, key=lambda k: len(texts[unique[k][0]]))  # similar lengths pad less
    bar = tqdm(total=len(order), desc=f"text features ({backbone.info.name})", unit="text",
               disable=None if progress else True)

    def encode(chunk: list[str]) -> dict:
        return backbone.tokenize([texts[unique[k][0]] for k in chunk])

    def run(chunk: list[str], encoded=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        p, t, m = backbone(**(encoded if encoded is not None else encode(chunk)))
        # the token vectors come with every forward pass: cached even when not asked for, so that a later stage
        # with a token fusion (phase 2's grid) reads them instead of encoding every text again
        return [(p[j].float().clone(), t[j][m[j]].to(torch.float16).clone()) for j in range(len(chunk))]

    def keep(key: str, vec, seq) -> None:
        _keep(store, key, unique[key], vec, seq, pooled, toks if tokens else None)

    return _Plan(pooled, toks if tokens else None, list(_batches(order, batch_size)), run, keep, bar, len(order),
                 encode=encode)


def _run_plan(plan: _Plan) -> tuple[list[torch.Tensor], list[torch.Tensor] | None, int]:
    for chunk in plan.chunks:
        for key, (vec, seq) in zip(chunk, plan.run(chunk), strict=True):
            plan.keep(key, vec, seq)
        plan.bar.update(len(chunk))
    plan.bar.close()
    return plan.pooled, plan.toks, plan.count


@torch.inference_mode()
def text_features(backbone, texts: list[str], store: FeatureStore, keys: list[str], tokens: bool,
                  batch_size: int, progress: bool) -> tuple[list[torch.Tensor], list[torch.Tensor] | None, int]:
    return _run_plan(_text_plan(backbone, texts, store, keys, tokens, batch_size, progress))


#: Test-time views of an image (``extract_features(image_view=...)``): name -> PIL transpose applied after decoding.
IMAGE_VIEWS = {"hflip": Image.Transpose.FLIP_LEFT_RIGHT}


def image_store_key(info, view: str | None = None) -> str:
    """Cache key of an image backbone's features, of the image itself (``view`` None) or of a view of it."""
    if view is not None and view not in IMAGE_VIEWS:
        raise UserError(f"unknown image view {view!r}; known: {', '.join(IMAGE_VIEWS)}")
    return info.key() if view is None else f"{info.key()}-{view}"


def _image_plan(backbone, data_dir: Path, guids: list[str], store: FeatureStore, tokens: bool, batch_size: int,
                progress: bool, cache_dir: Path | None, view: str | None) -> _Plan:
    """The image plan; its ``prepare(chunk)`` decodes and preprocesses one batch (PIL releases the GIL)."""
    keyed = [image_content_key(data_dir, g) for g in guids]
    pooled, toks, unique = _lookup(store, [k for k, _ in keyed], tokens)
    order = list(unique)
    bar = tqdm(total=len(order), desc=f"image features ({backbone.info.name}{', ' + view if view else ''})",
               unit="img", disable=None if progress else True)

    def prepare(chunk: list[str]) -> torch.Tensor:
        first = [unique[key][0] for key in chunk]
        images = [_decode(data_dir, guids[i], keyed[i][1], backbone.image_size) for i in first]
        if view is not None:
            images = [img.transpose(IMAGE_VIEWS[view]) for img in images]
        return backbone.preprocess(images)

    def forward_for(threads: int | None = None, own: bool = False):
        """The forward pass (onnxruntime when possible, with ``threads`` threads: default torch's; ``own``: a
        session of its own, not the process's shared one)."""
        if cache_dir is None:
            return backbone
        from msa.onnx_accel import fast_image_forward

        return fast_image_forward(backbone, cache_dir, threads=threads, reuse=not own)

    def run(chunk: list[str], pixels=None, *, forward) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        p, t = forward(prepare(chunk) if pixels is None else pixels)
        return [(p[j].float().clone(), t[j].to(torch.float16).clone() if tokens else None) for j in range(len(chunk))]

    def keep(key: str, vec, seq) -> None:
        _keep(store, key, unique[key], vec, seq, pooled, toks)

    plan = _Plan(pooled, toks if tokens else None, list(_batches(order, batch_size)), run, keep, bar, len(order),
                 prepare=prepare, forward_for=forward_for)
    return plan


@torch.inference_mode()
def image_features(backbone, data_dir: Path, guids: list[str], store: FeatureStore, tokens: bool,
                   batch_size: int, progress: bool, cache_dir: Path | None = None, view: str | None = None,
                   decode_workers: int | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor] | None, int]:
    """Pooled (and ``tokens``: patch) features of every guid's image; the next batches are decoded by
    ``decode_workers`` background threads (None: :func:`default_decode_workers`; 0: inline) while the current one
    runs through the backbone."""
    return _run_image_plan(_image_plan(backbone, data_dir, guids, store, tokens, batch_size, progress, cache_dir,
                                       view), decode_workers)


def _run_image_plan(plan: _Plan, decode_workers: int | None):
    forward = plan.forward_for() if plan.chunks else None
    for chunk, pixels in zip(plan.chunks, _prefetched(plan.prepare, plan.chunks, decode_workers), strict=True):
        for key, (vec, seq) in zip(chunk, plan.run(chunk, pixels, forward=forward), strict=True):
            plan.keep(key, vec, seq)
        plan.bar.update(len(chunk))
    plan.bar.close()
    return plan.pooled, plan.toks, plan.count


_ARENAS_LIMITED = []


def limit_malloc_arenas(n: int = 2) -> None:
    """Cap glibc's malloc arenas at ``n`` (``mallopt(M_ARENA_MAX)``, once per process) before extraction threads
    start: each thread that frees large tensors otherwise gets an arena of its own that keeps its pages (the final
    recipe's two lanes + decoder held 5.5 GiB instead of 3); a no-op elsewhere than glibc."""
    if _ARENAS_LIMITED:
        return
    _ARENAS_LIMITED.append(n)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-8, int(n))  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


#: the lanes give freed memory back every this many batches (:func:`malloc_trim`)
TRIM_EVERY = 8


def malloc_trim() -> None:
    """Give the heap's freed pages back to the system (glibc; elsewhere nothing)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


@torch.inference_mode()
def _overlapped(text_plans: list[_Plan], image_plans: list[_Plan]) -> None:
    """Run the text and the image plans at once in two lanes (threads) of one torch / onnxruntime thread each: lane
    0 takes text batches first (every text backbone's, e.g. a group's members), lane 1 image batches, and a lane
    whose kind is done helps with the other's. The features are bit-identical to the sequential path (one thread
    or two give the same results for these encoders; every batch is the same as there), only the order in which
    batches finish changes. The text batches are tokenised here first, in this thread (a fast tokenizer must not
    be used by two threads at once)."""
    import threading
    from collections import deque

    limit_malloc_arenas()
    queues = {"text": deque((plan, chunk, plan.encode(chunk)) for plan in text_plans for chunk in plan.chunks),
              "image": deque((plan, chunk, None) for plan in image_plans for chunk in plan.chunks)}
    lock = threading.Lock()
    errors: list[BaseException] = []
    done = [0]
    # one onnxruntime session per lane and image backbone
    forwards = [{id(plan): plan.forward_for(threads=1, own=True) for plan in image_plans if plan.chunks}
                for _ in (0, 1)]

    def lane(i: int) -> None:
        kinds = ("text", "image") if i == 0 else ("image", "text")
        try:
            with torch.inference_mode():
                while not errors:
                    with lock:
                        kind = next((k for k in kinds if queues[k]), None)
                        if kind is None:
                            return
                        plan, chunk, batch = queues[kind].popleft()
                    out = (plan.run(chunk, batch) if kind == "text" else
                           plan.run(chunk, forward=forwards[i][id(plan)]))
                    with lock:
                        for key, (vec, seq) in zip(chunk, out, strict=True):
                            plan.keep(key, vec, seq)
                        plan.bar.update(len(chunk))
                        done[0] += 1
                        trim = done[0] % TRIM_EVERY == 0
                    if trim:  # the lanes' activations of growing sizes fragment the heap: give free pages back
                        malloc_trim()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            errors.append(exc)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        workers = [threading.Thread(target=lane, args=(i,), name=f"features-{i}", daemon=True) for i in (0, 1)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        torch.set_num_threads(threads)
        for plan in (*text_plans, *image_plans):
            plan.bar.close()
    if errors:
        raise errors[0]


def default_decode_workers() -> int:
    """Background threads that decode image batches ahead of the forward pass: one per spare core, at most 4."""
    return max(1, min(4, _cores() - 1))


def _prefetched(prepare, chunks: list, workers: int | None):
    """``prepare(chunk)`` for every chunk, in order, computed up to ``workers`` batches ahead in background threads
    so that decoding overlaps the forward pass (``workers`` 0: inline, in the caller's thread)."""
    workers = default_decode_workers() if workers is None else int(workers)
    if workers <= 0 or len(chunks) < 2:
        yield from (prepare(c) for c in chunks)
        return
    limit_malloc_arenas()
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    rest = iter(chunks)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending = deque(pool.submit(prepare, c) for _, c in zip(range(workers), rest, strict=False))
        while pending:
            result = pending.popleft().result()  # re-raises a worker's exception here
            nxt = next(rest, None)
            if nxt is not None:
                pending.append(pool.submit(prepare, nxt))
            yield result


def text_features_for(texts: Sequence[str], text_backbone, cache_dir: str | Path = DEFAULT_CACHE_DIR,
                      tokens: bool = False, batch_size: int = 32, progress: bool = False
                      ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """Features of arbitrary raw strings (e.g. captions), normalised and cached exactly like the posts' texts."""
    store = FeatureStore(cache_dir, _text_store_key(text_backbone.info), text_backbone.info.dim)
    model_texts = [normalize_text(t, **TEXT_NORMALISATION) for t in texts]
    keys = [_sha(t.encode("utf-8")) for t in model_texts]
    pooled, toks, _ = text_features(text_backbone, model_texts, store, keys, tokens, batch_size, progress)
    return (torch.stack(pooled) if pooled else torch.zeros(0, text_backbone.info.dim)), toks


def extract_features(guids: Sequence[str], data_dir: str | Path, text_backbone=None, image_backbone=None,
                     cache_dir: str | Path = DEFAULT_CACHE_DIR, tokens: bool | Sequence[str] = False,
                     batch_size: int = 32, progress: bool = True, accelerate: bool = True,
                     image_view: str | None = None, decode_workers: int | None = None,
                     check_files: bool = True, overlap: bool = True) -> FeatureSet:
    """Pooled (and with ``tokens`` also sequence) features of every guid, from the cache where possible.

    ``check_files``: refuse (a clear error) a missing ``data_dir`` or one in which most guids have no file of a
    modality asked for (:func:`msa.data.check_data_dir`); False only where absent files are meant (one post).

    ``tokens``: True for token/patch sequences of every modality, or the modality names that need them.

    ``image_view`` (a name of :data:`IMAGE_VIEWS`, e.g. ``"hflip"``): features of that view of every image
    instead of the image itself (test-time augmentation), cached under their own key.

    ``accelerate`` runs CNN image backbones in onnxruntime on the CPU (:mod:`msa.onnx_accel`).

    ``decode_workers``: background threads decoding the next image batches during the forward pass (None: one per
    spare core, at most 4; 0: decode inline).

    ``overlap``: when both modalities have posts to compute, on two or more cores, text and image batches run at
    once in two lanes (:func:`_overlapped`; the same features, ~1.25x faster than one after the other)."""
    data_dir = Path(data_dir)
    guids = list(guids)
    if check_files:
        check_data_dir(data_dir, guids, text=text_backbone is not None, image=image_backbone is not None)
    want = {"text", "image"} if tokens is True else set(tokens or ())
    groups = {m: bb for m, bb in (("text", text_backbone), ("image", image_backbone)) if hasattr(bb, "members")}
    bad = sorted(set(groups) & want)
    if bad:
        raise UserError(f"a fusion over token sequences needs one {bad[0]} backbone, not the group "
                        f"{groups[bad[0]].info.name}; use a pooled fusion (not cross_attention)")
    # every single backbone, a group's members each on its own (and cached on its own; their pooled vectors are
    # concatenated below): (modality, backbone, store, plan)
    parts = []
    texts = keys = None
    for m, given in (("text", text_backbone), ("image", image_backbone)):
        if given is None:
            continue
        for bb in (given.members if m in groups else [given]):
            if m == "text":
                if texts is None:
                    texts = [model_text(data_dir, g) for g in guids]
                    keys = [_sha(t.encode("utf-8")) for t in texts]
                store = FeatureStore(cache_dir, _text_store_key(bb.info), bb.info.dim)
                plan = _text_plan(bb, texts, store, keys, "text" in want, batch_size, progress)
            else:
                store = FeatureStore(cache_dir, image_store_key(bb.info, image_view), bb.info.dim)
                plan = _image_plan(bb, data_dir, guids, store, "image" in want, batch_size, progress,
                                   Path(cache_dir) if accelerate else None, image_view)
            parts.append((m, bb, store, plan))
    with torch.inference_mode():
        if overlap and _can_overlap(parts):
            _overlapped([p for m, _, _, p in parts if m == "text"], [p for m, _, _, p in parts if m == "image"])
        else:
            for m, _, _, plan in parts:
                if m == "text":
                    _run_plan(plan)
                else:
                    _run_image_plan(plan, decode_workers)
    fs = FeatureSet(guids=guids)
    for m, given in (("text", text_backbone), ("image", image_backbone)):
        mine = [(bb, store, plan) for pm, bb, store, plan in parts if pm == m]
        if not mine:
            continue
        fs.pooled[m] = torch.cat([torch.stack(plan.pooled) for _, _, plan in mine], dim=1)
        if mine[0][2].toks is not None and m not in groups:
            fs.tokens[m] = mine[0][2].toks
        fs.backbones[m] = _info_dict(given.info)
        fs.stats[m] = {"computed": sum(plan.count for _, _, plan in mine),
                       "corrupt": sum(store.corrupt for _, store, _ in mine), "total": len(guids)}
        if m in groups:
            fs.stats[m]["members"] = {bb.info.name: plan.count for bb, _, plan in mine}
    if sum(st["computed"] for st in fs.stats.values()) >= RELEASE_AFTER:
        release_memory()
    return fs


def _can_overlap(parts: list) -> bool:
    """Text and image extraction run at once when both have work, there are two cores and all run on the CPU."""
    kinds = {m for m, _, _, plan in parts if plan.chunks}
    if kinds != {"text", "image"} or _cores() < 2:
        return False
    for _, bb, _, plan in parts:
        if not plan.chunks:
            continue
        real = bb.materialise() if hasattr(bb, "materialise") else bb
        params = next(iter(real.parameters()), None) if hasattr(real, "parameters") else None
        if params is not None and params.device.type != "cpu":
            return False
    return True


def with_image_view(fs: FeatureSet, view_fs: FeatureSet) -> FeatureSet:
    """``fs`` with its image features (pooled and tokens) replaced by those of ``view_fs`` (same guids)."""
    if view_fs.guids != fs.guids:
        raise ValueError("the view's features are not of the same guids")
    return FeatureSet(guids=fs.guids, pooled={**fs.pooled, "image": view_fs.pooled["image"]},
                      tokens={**fs.tokens, **({"image": view_fs.tokens["image"]} if "image" in view_fs.tokens
                                              else {})},
                      backbones=fs.backbones, stats=fs.stats)


#: Entries computed by one extraction after which its memory is given back (:func:`release_memory`): a phase's
#: extraction, not one post (the garbage collection alone costs ~0.3 s with an ensemble loaded).
RELEASE_AFTER = 256


def release_memory() -> None:
    """Give the memory of finished backbone passes back to the system (glibc keeps freed arenas otherwise), so a
    phase that trains in worker processes after extracting features does not hold the extraction's peak."""
    import gc

    from msa.onnx_accel import drop_sessions

    drop_sessions()  # their arenas are the largest part of an image pass's memory
    gc.collect()
    malloc_trim()


def _info_dict(info) -> dict:
    from dataclasses import asdict

    d = asdict(info)
    d["key"] = info.key()
    return d
