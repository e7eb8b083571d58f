"""Inference with trained models: which model is the default, loading a checkpoint or an ensemble with every member
checked, rebuilding the backbones it was trained on, the (test-time augmented, ensembled) probabilities of posts, and
the probabilities of one post given as files (:func:`predict_post`) and the provenance record of a prediction file.
``phase4/predict_test.py`` is the command-line front end; phases 4 and 5 use :func:`backbones_for` and
:func:`default_checkpoint`.
"""

from __future__ import annotations

from pathlib import Path

from msa.cli import REPO_ROOT, UserError
from msa.stages import model_dirs


def member_proba(members, views: list[str], bias, guids: list[str], data_dir: Path, cache_dir: Path,
                 batch_size: int, progress: bool = True, check_files: bool = True, backbones=None):
    """``(probabilities (N, 3), views used)`` of ``guids`` (files under ``data_dir``) by checkpoint ``members``: the
    mean over members and test-time ``views`` (none without an image modality), with the decision ``bias``.
    ``check_files``: a missing data folder, or one without the files of most guids, is an error (not placeholders).
    ``backbones``: ``(text, image)`` already built by :func:`backbones_for` (a server predicting post after post
    loads them once); default: built here."""
    import json

    import numpy as np
    import torch

    from msa import side
    from msa.ensemble import apply_bias
    from msa.features import extract_features, with_image_view
    from msa.trainer import predict_rows

    tb, ib = backbones if backbones is not None else backbones_for(members[0][1], cache_dir)
    token_mods = sorted({m for _, c in members for m in c.get("token_modalities", [])})
    fs = extract_features(guids, data_dir, tb, ib, cache_dir, tokens=token_mods, batch_size=batch_size,
                          progress=progress, check_files=check_files)
    views = views if ib is not None else []
    # each member's numeric side features as it was trained (csv rows of posts not predicted here are ignored)
    sides = {json.dumps(c.get("side_features"), sort_keys=True): c for _, c in members}
    sides = {k: side.for_checkpoint(c, guids, data_dir, cache_dir, progress, strict=False) for k, c in sides.items()}
    probas = []
    for view in [None, *views]:  # test-time augmentation: the mean over the image and its views
        vfs = fs if view is None else with_image_view(fs, extract_features(
            guids, data_dir, None, ib, cache_dir, tokens=[m for m in token_mods if m == "image"],
            batch_size=batch_size, image_view=view, progress=progress, check_files=False))
        with torch.no_grad():
            probas += [predict_rows(model, side.attach(vfs, sides[json.dumps(config.get("side_features"),
                                                                             sort_keys=True)]),
                                    range(len(guids)), config.get("token_modalities", []))
                       for model, config in members]
    return apply_bias(np.mean(probas, axis=0), bias), views


def predict_post(ckpt: Path, image: Path | None, text: str | None, text_file: Path | None, cache_dir: Path,
                 batch_size: int):
    """predict_test's one-post mode (``--image`` and/or ``--text`` / ``--text-file``): the post is written to a
    temporary data folder so that it is read and preprocessed exactly as a dataset post. Returns ``(probabilities
    (3,), warnings)``; a missing or unreadable file is a :class:`UserError` naming its flag."""
    import tempfile

    from msa.data import IMAGE_EXTENSIONS, MAX_IMAGE_BYTES, MAX_TEXT_BYTES, load_image, read_capped, read_text

    for flag, path in (("--image", image), ("--text-file", text_file)):
        if path is not None and not path.is_file():
            raise UserError(f"{flag} {path}: no such file" if not path.exists() else
                            f"{flag} {path}: not a regular file")
    members, bias, views = load_members(ckpt)
    warnings = []
    with tempfile.TemporaryDirectory(prefix="msa-post-") as tmp:
        data = Path(tmp)
        if image is not None:
            # the reader finds images by extension and decodes them by content: an unknown extension (.tiff, .jfif)
            # is read as what it really is
            ext = image.suffix.lower() if image.suffix.lower() in IMAGE_EXTENSIONS else ".jpg"
            try:
                (data / f"post{ext}").write_bytes(read_capped(image, MAX_IMAGE_BYTES)[0])
            except OSError as exc:
                raise UserError(f"--image {image}: {getattr(exc, 'detail', None) or exc}") from None
            img = load_image(data, "post")
            if not img.ok:
                warnings.append(f"--image {image} cannot be used ({img.status}: {img.detail}); predicted "
                                "without it (a grey placeholder, as for a dataset post with a broken image)")
        if text_file is not None:
            try:
                (data / "post.txt").write_bytes(read_capped(text_file, MAX_TEXT_BYTES, cut=True)[0])
            except OSError as exc:
                raise UserError(f"--text-file {text_file}: {getattr(exc, 'detail', None) or exc}") from None
        else:
            (data / "post.txt").write_text(text or "", encoding="utf-8")
        if read_text(data, "post").truncated:
            warnings.append(f"the text was cut to its first {MAX_TEXT_BYTES:,} bytes")
        proba = member_proba(members, views, bias, ["post"], data, cache_dir, batch_size,
                             progress=False, check_files=False)[0][0]
    return proba, warnings


def default_model(root: Path | None = None) -> Path:
    """predict_test's default: the model of the latest stage that left one (:mod:`msa.stages`) in the checkout
    ``root`` (default: this one): the final recipe's ensemble, else phase 4's, 3's or 1's best checkpoint, else the
    newest run's checkpoint."""
    from msa.ensemble import is_ensemble

    root = Path(root) if root is not None else REPO_ROOT
    for folder in model_dirs(root, kinds=("ensemble",)):
        if is_ensemble(folder):
            return folder
    return default_checkpoint(root)


def model_files(ckpt: Path) -> list[Path]:
    """The files a checkpoint or ensemble folder's predictions depend on (ensemble.json, each member's weights
    and config), read without loading anything: the up-to-date check of predict_test."""
    from msa.checkpoint import CONFIG_FILE, MODEL_FILE
    from msa.ensemble import ENSEMBLE_FILE, is_ensemble, read_ensemble

    ckpt = Path(ckpt)
    dirs = read_ensemble(ckpt).member_dirs if is_ensemble(ckpt) else [ckpt]
    return ([ckpt / ENSEMBLE_FILE] if is_ensemble(ckpt) else []) + [d / n for d in dirs for n in (MODEL_FILE,
                                                                                                CONFIG_FILE)]


def load_members(ckpt: Path):
    """``([(model, config), ...], bias, tta views)`` of a checkpoint folder or an ensemble folder, every member
    checked; the views (e.g. ``["hflip"]``) are the test-time augmentations the ensemble was evaluated with."""
    from msa.checkpoint import load_checkpoint
    from msa.data import LABELS
    from msa.ensemble import is_ensemble, read_ensemble
    from msa.features import TEXT_NORMALISATION

    if is_ensemble(ckpt):
        spec = read_ensemble(ckpt)
        members, bias, views = [load_checkpoint(d) for d in spec.member_dirs], spec.bias, spec.tta
    else:
        members, bias, views = [load_checkpoint(ckpt)], None, []
    first = members[0][1]
    for _, config in members:
        if list(config.get("labels", [])) != list(LABELS):
            raise UserError(f"{ckpt} predicts labels {config.get('labels')}, this project uses {list(LABELS)}")
        if config.get("text_normalisation", TEXT_NORMALISATION) != TEXT_NORMALISATION:
            raise UserError(f"{ckpt} was trained with another text normalisation; retrain it with this version")
        if config.get("backbones") != first.get("backbones"):
            raise UserError(f"the members of {ckpt} were trained on different backbones")
    return members, bias, list(views)


def default_checkpoint(root: Path | None = None) -> Path:
    """The best checkpoint of the latest stage that has one (phase 4, 3, 1) in the checkout ``root`` (default: this
    one), else the newest run's checkpoint."""
    root = Path(root) if root is not None else REPO_ROOT
    for best in model_dirs(root, kinds=("checkpoint",)):
        if (best / "model.safetensors").is_file():
            return best
    found = sorted(root.glob("phase*/results/*/checkpoint/model.safetensors"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError("no trained model found: train one first (`make run DATA=path/to/dataset`, or "
                        "`make demo` on synthetic data; the quickest single model: python phase1/main.py "
                        "--data-root DATA), or pass --checkpoint DIR")
    return found[-1].parent


def backbones_for(config: dict, cache_dir: Path | None = None):
    """Rebuild the backbones a checkpoint was trained on and refuse any whose weights differ. With the feature
    cache ``cache_dir``, they load only when a feature has to be computed (:func:`msa.backbones.cached_backbone`)."""
    from functools import partial

    from msa.backbones import cached_backbone, image_backbone, recorded_text_precision, text_backbone

    built = {}
    loaders = ((("text", text_backbone), ("image", image_backbone)) if cache_dir is None else
               (("text", partial(cached_backbone, "text", cache_dir=cache_dir)),
                ("image", partial(cached_backbone, "image", cache_dir=cache_dir))))
    for modality, loader in loaders:
        info = config.get("backbones", {}).get(modality)
        if info is None:
            built[modality] = None
            continue
        pre = info.get("preprocessing", {})
        # text: in the precision the training features were computed in (its cache key)
        kw = ({"pooling": pre.get("pooling"), "max_length": pre.get("max_length"),
               "precision": recorded_text_precision(info)} if modality == "text" else {})
        bb = loader(info["name"], **{k: v for k, v in kw.items() if v})
        if not _same_backbone(bb, info):
            raise UserError(
                f"the checkpoint was trained on {modality} backbone {info['name']} with weights "
                f"{info['weights_sha256'][:12]}, but what loads under that name now has "
                f"{bb.info.weights_sha256[:12]} (or different preprocessing): its features would not match")
        built[modality] = bb
    return built["text"], built["image"]


def _same_backbone(bb, info: dict) -> bool:
    """Whether the backbone ``bb`` computes the features recorded in ``info``: the same feature-cache key (for a
    group: every member's, which do not depend on where the members' folders are; the group's own key records their
    paths, so a moved checkout would refuse its own ensemble)."""
    members = (info.get("preprocessing") or {}).get("members")
    if members and hasattr(bb, "members"):
        return [m.info.key() for m in bb.members] == [m.get("key") for m in members]
    return bb.info.weights_sha256 == info["weights_sha256"] and bb.info.key() == info["key"]


def write_provenance(path: Path, output: Path, ckpt: Path, config: dict, counts: dict, n_members: int = 1,
                     bias=None, tta=()) -> None:
    import json
    import time

    from msa.ensemble import ENSEMBLE_FILE
    from msa.io import file_sha256, write_json

    ensemble = (Path(ckpt) / ENSEMBLE_FILE).is_file()
    run = Path(ckpt) if ensemble else Path(ckpt).parent
    source = (run / "SOURCE").read_text(encoding="utf-8").strip() if (run / "SOURCE").is_file() else None
    metrics = {}
    if (run / "metrics.json").is_file():
        m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
        metrics = {k: m[k] for k in ("accuracy", "weighted_f1", "macro_f1", "f1_neutral") if k in m}
    write_json(path, {"output": str(Path(output).resolve()), "rows": int(sum(counts.values())), "counts": counts,
                      "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "checkpoint": str(Path(ckpt).resolve()),
                      "source_run": source, "model_sha256": file_sha256(Path(ckpt) / (ENSEMBLE_FILE if ensemble
                                                                 else "model.safetensors")),
                      "members": n_members, "decision_bias": bias, "test_time_views": list(tta),
                      "backbones": {m: b.get("name") for m, b in (config.get("backbones") or {}).items()
                                    if "name" in b},
                      "side_features": (config.get("side_features") or {}).get("features", []),
                      "validation": metrics})
