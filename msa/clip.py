"""Frozen CLIP from a local Hugging Face folder: cached, L2-normalised projected embeddings and zero-shot prompts.

* :func:`clip_problem` says what is missing before anything is loaded (the folder, or which of its files), and
  :func:`how_to_get` how to obtain it; phase 6 then falls back to the default backbones.
* :func:`load_clip` loads any CLIP-like dual encoder (a model with ``get_image_features`` and
  ``get_text_features``, e.g. CLIPModel) with ``local_files_only=True`` and never with remote code, frozen.
* :func:`image_embeddings` / :func:`text_embeddings`: the projected ``image_embeds`` / ``text_embeds``, L2-normalised,
  cached with :class:`msa.features.FeatureStore` under ``<cache>/clip-image-<key>/`` and ``<cache>/clip-text-<key>/``.
  The key covers the model class, the folder's weights sha256, the preprocessing (image processor settings;
  tokenizer and its 77-token truncation) and :data:`EMBED_VERSION`, not where the folder lives; an entry is
  named by the sha256 of the image file's bytes or of the exact string the tokenizer sees (posts' texts are
  :func:`msa.features.model_text`, the same normalised text every phase uses). A rerun computes nothing.
* :func:`class_embeddings` + :func:`zero_shot_proba`: zero-shot classification with the prompt ensemble of
  :data:`ZERO_SHOT_TEMPLATES` (one normalised mean embedding per class, as in the CLIP paper) and the model's
  own ``logit_scale``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from msa.cli import PRETRAINED_DIR, REPO_ROOT, UserError

# light at import: phase 6 resolves the folder for its up-to-date check before anything is loaded; torch,
# transformers and the feature store are imported by the functions that embed
if TYPE_CHECKING:
    import numpy as np
    import torch

    from msa.features import FeatureStore

log = logging.getLogger(__name__)

CLIP_FOLDER_NAME = "clip-vit-large-patch14-336"
CLIP_REPO_ID = "openai/clip-vit-large-patch14-336"
DEFAULT_CLIP = PRETRAINED_DIR / CLIP_FOLDER_NAME
#: Bump when the way embeddings are computed changes: part of every cache key.
EMBED_VERSION = 1
CLIP_MAX_TOKENS = 77
#: Prompt templates averaged per class for zero-shot classification ("{}" = the class word).
ZERO_SHOT_TEMPLATES: tuple[str, ...] = (
    "a {} photo.",
    "a photo with a {} mood.",
    "a {} social media post.",
    "a tweet with a {} sentiment.",
    "an image that expresses a {} feeling.",
    "a {} picture posted online.",
)
CLASS_WORDS = {"negative": "negative", "neutral": "neutral", "positive": "positive"}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------- the folder

def resolve_folder(path: str | Path) -> tuple[Path, list[Path]]:
    """The folder ``path`` names (as given, relative to the project, or in pretrained_models/), and the
    candidates looked at; the first candidate when none exists."""
    path = Path(path).expanduser()
    cands = [path] if path.is_absolute() else [path.resolve(), REPO_ROOT / path, PRETRAINED_DIR / path]
    cands = list(dict.fromkeys(cands))
    for cand in cands:
        if cand.is_dir():
            return cand.resolve(), cands
    return cands[0], cands


def missing_files(folder: Path) -> list[str]:
    """What a CLIP folder lacks: config, weights (and shards), tokenizer files, preprocessor_config.json."""
    from msa.backbones import TOKENIZER_HINT, BackboneError, _has_tokenizer, _weight_files

    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    try:
        weights, shards = _weight_files(folder)
    except BackboneError as exc:
        return missing + [str(exc)]
    if not weights:
        missing.append("a weights file (model.safetensors or pytorch_model.bin)")
    missing += [f"weights shard {s}" for s in shards]
    if not _has_tokenizer(folder):
        missing.append(TOKENIZER_HINT)
    if not (folder / "preprocessor_config.json").is_file():
        missing.append("preprocessor_config.json")
    return missing


def clip_problem(path: str | Path) -> str | None:
    """Why no CLIP can be loaded from ``path`` (the missing folder or the files it lacks), or None."""
    folder, cands = resolve_folder(path)
    if not folder.is_dir():
        where = str(folder) if len(cands) == 1 else f"{folder} (nor {', '.join(map(str, cands[1:]))})"
        return f"the CLIP folder {where} does not exist"
    missing = missing_files(folder)
    if missing:
        return f"the CLIP folder {folder} is incomplete: it lacks {'; '.join(missing)}"
    return None


def how_to_get(path: str | Path) -> str:
    folder, _ = resolve_folder(path)
    default = DEFAULT_CLIP
    hint = (f"to get it, run `python pretrained_models/download_seed_models.py --only {CLIP_FOLDER_NAME}` on a "
            f"machine with internet access (it writes {default}, about 1.7 GB), or copy a Hugging Face folder of "
            f"{CLIP_REPO_ID} (config.json, model.safetensors or pytorch_model.bin, tokenizer files, "
            f"preprocessor_config.json; e.g. made with `huggingface-cli download {CLIP_REPO_ID} --local-dir "
            f"{folder}`) to {folder}")
    if folder != default:
        hint += ", or pass --clip-model with the path of such a folder"
    return hint + "; see pretrained_models/README.md"


# ------------------------------------------------------------------------------------------- the model

@dataclass
class Clip:
    """A frozen CLIP-like dual encoder with its tokenizer and image processor."""

    model: torch.nn.Module
    tokenizer: object
    processor: object
    folder: Path
    weights_sha256: str
    architecture: str
    dim: int
    max_length: int
    image_preprocessing: dict
    text_preprocessing: dict
    logit_scale: float
    device: torch.device

    def info(self) -> dict:
        return {"folder": str(self.folder), "architecture": self.architecture, "weights_sha256": self.weights_sha256,
                "dim": self.dim, "max_length": self.max_length, "logit_scale": self.logit_scale,
                "image_preprocessing": self.image_preprocessing, "text_preprocessing": self.text_preprocessing,
                "image_key": self.store_key("image"), "text_key": self.store_key("text")}

    def store_key(self, kind: str) -> str:
        """Cache folder name of ``kind`` ("image"/"text") embeddings: independent of the folder's location."""
        ident = {"what": f"clip-{kind}-embeds-projected-l2", "architecture": self.architecture,
                 "weights_sha256": self.weights_sha256, "dim": self.dim, "version": EMBED_VERSION,
                 "preprocessing": self.image_preprocessing if kind == "image" else self.text_preprocessing}
        blob = json.dumps(ident, sort_keys=True, separators=(",", ":"), default=str)
        return f"clip-{kind}-{_sha(blob.encode('utf-8'))[:16]}"

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """(B, dim) L2-normalised projected text embeddings (truncated at ``max_length`` tokens)."""
        import torch

        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        with torch.inference_mode():
            out = self.model.get_text_features(input_ids=enc["input_ids"].to(self.device),
                                               attention_mask=enc["attention_mask"].to(self.device))
            return torch.nn.functional.normalize(_tensor(out).float(), dim=-1).cpu()

    def embed_images(self, images) -> torch.Tensor:
        """(B, dim) L2-normalised projected image embeddings of RGB PIL images."""
        import torch

        pixels = self.processor(images=[im if im.mode == "RGB" else im.convert("RGB") for im in images],
                                return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            out = self.model.get_image_features(pixel_values=pixels.to(self.device, torch.float32))
            return torch.nn.functional.normalize(_tensor(out).float(), dim=-1).cpu()


def _tensor(out) -> torch.Tensor:
    """get_*_features return a tensor (transformers 4) or an output whose pooler_output is projected (5)."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:
        pooled = out[0]
    return pooled


def load_clip(path: str | Path, device: str | torch.device = "cpu") -> Clip:
    """Load a CLIP-like folder, frozen, locally and without remote code. A missing or incomplete folder raises
    :class:`UserError` naming what it lacks (call :func:`clip_problem` first to fall back instead)."""
    import torch
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    from msa.backbones import (
        _from_pretrained,
        _lowercases,
        _missing_keys,
        _processor_preprocessing,
        quiet_transformers,
        weights_sha256,
    )

    problem = clip_problem(path)
    if problem:
        raise UserError(f"{problem}; {how_to_get(path)}")
    folder, _ = resolve_folder(path)
    from msa.backbones import _weight_files

    weights, _ = _weight_files(folder)
    model, loading = _from_pretrained(AutoModel, folder, "CLIP")
    if not (callable(getattr(model, "get_image_features", None))
            and callable(getattr(model, "get_text_features", None))):
        raise UserError(f"--clip-model {folder} holds a {type(model).__name__}, not a CLIP-like dual encoder "
                        "(it has no get_image_features / get_text_features)")
    _missing_keys(loading, model, model, folder, allow=())  # every parameter, projections included, must load
    model.requires_grad_(False)
    model.eval()
    with quiet_transformers():
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
            processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True,
                                                           trust_remote_code=False)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"cannot load the tokenizer / image processor of {folder}: "
                            f"{' '.join(str(exc).split())[:300]}") from exc
    text_cfg = getattr(model.config, "text_config", None)
    limits = [CLIP_MAX_TOKENS, getattr(text_cfg, "max_position_embeddings", None),
              getattr(tokenizer, "model_max_length", None)]
    max_length = min(int(v) for v in limits if isinstance(v, int) and 0 < v < 100_000)
    dim = int(getattr(model.config, "projection_dim", 0) or 0)
    device = torch.device(device)
    model.to(device)
    if not dim:
        dim = int(_tensor(model.get_text_features(input_ids=torch.zeros(1, 2, dtype=torch.long, device=device)))
                  .shape[-1])
    scale = getattr(model, "logit_scale", None)
    logit_scale = float(scale.detach().exp().item()) if isinstance(scale, torch.Tensor) else 100.0
    image_prep = _processor_preprocessing(processor, folder)
    text_prep = {"tokenizer": type(tokenizer).__name__, "vocab_size": len(tokenizer), "max_length": max_length,
                 "truncation": True, "lowercase": _lowercases(tokenizer)}
    clip = Clip(model=model, tokenizer=tokenizer, processor=processor, folder=folder,
                weights_sha256=weights_sha256(weights), architecture=type(model).__name__, dim=dim,
                max_length=max_length, image_preprocessing=image_prep, text_preprocessing=text_prep,
                logit_scale=logit_scale, device=device)
    log.info("CLIP %s (%s, %d-d embeddings, texts truncated at %d tokens) on %s", folder, clip.architecture, dim,
             max_length, device)
    return clip


# ----------------------------------------------------------------------------------------- embeddings

def _cached(store: FeatureStore, keys: list[str]) -> tuple[list[torch.Tensor | None], dict[str, list[int]]]:
    """Cached rows, and the rows still to compute grouped by content key (each key computed once)."""
    rows: list[torch.Tensor | None] = [store.load(k) for k in keys]
    todo: dict[str, list[int]] = {}
    for i, (key, row) in enumerate(zip(keys, rows)):
        if row is None:
            todo.setdefault(key, []).append(i)
    return rows, todo


def _stats(store: FeatureStore, total: int, computed: int) -> dict:
    return {"total": total, "computed": computed, "corrupt": store.corrupt, "cache": str(store.dir)}


def text_embeddings(clip: Clip, texts: Sequence[str], cache_dir: str | Path, batch_size: int = 32,
                    progress: bool = True, desc: str = "CLIP text embeddings") -> tuple[torch.Tensor, dict]:
    """(N, dim) embeddings of the exact strings ``texts``, from the cache where possible; and the stats."""
    import torch
    from tqdm import tqdm

    from msa.features import FeatureStore

    texts = list(texts)
    store = FeatureStore(cache_dir, clip.store_key("text"), clip.dim)
    keys = [_sha(t.encode("utf-8")) for t in texts]
    rows, todo = _cached(store, keys)
    order = sorted(todo, key=lambda k: len(texts[todo[k][0]]))  # similar lengths pad less
    with tqdm(total=len(order), desc=desc, unit="text", disable=None if progress else True) as bar:
        for i in range(0, len(order), batch_size):
            chunk = order[i:i + batch_size]
            emb = clip.embed_texts([texts[todo[k][0]] for k in chunk])
            for key, vec in zip(chunk, emb):
                vec = vec.clone()
                store.save(key, vec)
                for r in todo[key]:
                    rows[r] = vec
            bar.update(len(chunk))
    out = torch.stack(rows) if rows else torch.zeros(0, clip.dim)
    return out, _stats(store, len(texts), len(order))


def image_embeddings(clip: Clip, data_dir: str | Path, guids: Sequence[str], cache_dir: str | Path,
                     batch_size: int = 32, progress: bool = True) -> tuple[torch.Tensor, dict]:
    """(N, dim) embeddings of the images of ``guids`` (read with msa.data.load_image; a missing or broken file
    is the grey placeholder, as everywhere), from the cache where possible; and the stats."""
    import torch
    from tqdm import tqdm

    from msa.data import load_image
    from msa.features import FeatureStore, image_content_key

    data_dir = Path(data_dir)
    guids = list(guids)
    store = FeatureStore(cache_dir, clip.store_key("image"), clip.dim)
    keys = [image_content_key(data_dir, g)[0] for g in guids]
    rows, todo = _cached(store, keys)
    order = list(todo)
    bad = 0
    with tqdm(total=len(order), desc="CLIP image embeddings", unit="img", disable=None if progress else True) as bar:
        for i in range(0, len(order), batch_size):
            chunk = order[i:i + batch_size]
            images = []
            for key in chunk:
                res = load_image(data_dir, guids[todo[key][0]])  # full decode: CLIP's own resize, exactly
                if not res.ok:
                    bad += 1
                    log.debug("image of %s: %s (%s), placeholder used", guids[todo[key][0]], res.status, res.detail)
                images.append(res.image)
            emb = clip.embed_images(images)
            for key, vec in zip(chunk, emb):
                vec = vec.clone()
                store.save(key, vec)
                for r in todo[key]:
                    rows[r] = vec
            bar.update(len(chunk))
    if bad:
        log.warning("%d images could not be read and were embedded as the grey placeholder", bad)
    out = torch.stack(rows) if rows else torch.zeros(0, clip.dim)
    return out, _stats(store, len(guids), len(order))


# ------------------------------------------------------------------------------------------ zero-shot

def prompts(labels: Sequence[str], templates: Sequence[str] = ZERO_SHOT_TEMPLATES,
            words: dict[str, str] | None = None) -> list[list[str]]:
    """One list of prompts per label (every template filled with the label's class word)."""
    words = words or CLASS_WORDS
    return [[t.format(words.get(lab, lab)) for t in templates] for lab in labels]


def class_embeddings(clip: Clip, labels: Sequence[str], cache_dir: str | Path,
                     templates: Sequence[str] = ZERO_SHOT_TEMPLATES, batch_size: int = 32
                     ) -> tuple[torch.Tensor, dict]:
    """(n_labels, dim) zero-shot class embeddings: the normalised mean of each class's normalised prompt
    embeddings (cached like any text); and the stats."""
    import torch

    per_class = prompts(labels, templates)
    flat = [p for ps in per_class for p in ps]
    emb, stats = text_embeddings(clip, flat, cache_dir, batch_size, progress=False, desc="CLIP prompt embeddings")
    emb = emb.view(len(labels), len(templates), -1).mean(1)
    return torch.nn.functional.normalize(emb, dim=-1), stats


def zero_shot_proba(*embeddings: torch.Tensor, classes: torch.Tensor, logit_scale: float) -> np.ndarray:
    """Softmax over ``logit_scale`` x cosine similarity to the class embeddings, averaged over the given
    (normalised) embeddings: one for image or text alone, both for image+text (mean of the two similarities)."""
    import torch

    sims = torch.stack([e.float() @ classes.float().T for e in embeddings]).mean(0)
    return torch.softmax(logit_scale * sims, dim=-1).double().numpy()
