"""Predict the unlabelled test posts with the best trained model and write predict.txt (guid,tag); or predict
one post given on the command line.

Run from the repository root:

    python phase4/predict_test.py --data-root dataset/
    python phase4/predict_test.py --checkpoint phase1/results/Phase1_Baseline-s42/checkpoint \\
        --test-file dataset/test_without_label.txt --data-root dataset/ --output predict.txt
    python phase4/predict_test.py --image photo.jpg --text "what a day #happy"      # one post
    python phase4/predict_test.py --image photo.jpg --text-file post.txt --json     # one post, for scripts

One post (--image and/or --text / --text-file): prints the label and the three probabilities (--json: one JSON
object), reading and preprocessing the files exactly as the dataset's posts; nothing is written.

Reads  a checkpoint or ensemble folder (default: the final recipe's final/results/best ensemble, else
       phase4/results/best/checkpoint, else phase3's, else phase1's best,
       else the newest phase*/results/*/checkpoint), the test index and <data-root>/data/* (through the feature cache)
Writes --output (default predict.txt at the repository root): a 'guid,tag' header, then one row per test guid
       in the test file's order; guids with a broken image or text still get a prediction (placeholders)
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from msa import cli  # noqa: E402

log = logging.getLogger("phase4.predict")
REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "predict.txt"
DEFAULT_PROVENANCE = REPO / "results" / "predict_provenance.json"


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0] + "\n\n" + "\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--data-root", type=Path, default=Path("dataset"), help="dataset root holding data/")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="checkpoint or ensemble folder (default: final/results/best, else the first of phase4/, "
                        "phase3/, phase1/results/best/checkpoint "
                        "that exists, else the newest run's)")
    p.add_argument("--test-file", type=Path, default=None,
                   help="test index guid,tag (default <data-root>/test_without_label.txt)")
    p.add_argument("--output", type=cli.output_file, default=DEFAULT_OUTPUT, help="where guid,tag predictions go")
    p.add_argument("--cache-dir", type=Path, default=cli.CACHE_ROOT / "features", help="feature cache folder")
    p.add_argument("--batch-size", type=cli.positive_int, default=32, help="batch size of the frozen backbones")
    p.add_argument("--probabilities", type=cli.output_file, default=None,
                   help="optional CSV with guid, predicted tag and the three probabilities")
    p.add_argument("--provenance", type=cli.output_file, default=None,
                   help="JSON record of where the predictions came from (checkpoint, its run, weights hash, "
                        "counts; read by the report). Default: results/predict_provenance.json for the default "
                        "--output, else <output>.provenance.json")
    one = p.add_argument_group("one post instead of the test file")
    one.add_argument("--image", type=Path, default=None, help="the post's image file")
    text = one.add_mutually_exclusive_group()
    text.add_argument("--text", default=None, help="the post's text")
    text.add_argument("--text-file", type=Path, default=None, help="a file holding the post's text (any encoding)")
    one.add_argument("--json", action="store_true", help="print one JSON object instead of a line")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def member_proba(members, views: list[str], bias, guids: list[str], data_dir: Path, cache_dir: Path,
                 batch_size: int, progress: bool = True, check_files: bool = True):
    """``(probabilities (N, 3), views used)`` of ``guids`` (files under ``data_dir``) by checkpoint ``members``: the
    mean over members and test-time ``views`` (none without an image modality), with the decision ``bias``.
    ``check_files``: a missing data folder, or one without the files of most guids, is an error (not placeholders)."""
    import json

    import numpy as np
    import torch

    from msa import side
    from msa.ensemble import apply_bias
    from msa.features import extract_features, with_image_view
    from msa.trainer import predict_rows

    tb, ib = backbones_for(members[0][1])
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


def predict_one(args, ckpt: Path) -> int:
    """The --image / --text mode: one post, written to a temporary data folder so that it is read and
    preprocessed exactly as a dataset post."""
    import json
    import tempfile

    from msa.data import IMAGE_EXTENSIONS, LABELS, MAX_IMAGE_BYTES, MAX_TEXT_BYTES, load_image, read_capped, read_text

    for flag, path in (("--image", args.image), ("--text-file", args.text_file)):
        if path is not None and not path.is_file():
            raise cli.UserError(f"{flag} {path}: no such file" if not path.exists() else
                                f"{flag} {path}: not a regular file")
    members, bias, views = load_members(ckpt)
    warnings = []
    with tempfile.TemporaryDirectory(prefix="msa-post-") as tmp:
        data = Path(tmp)
        if args.image is not None:
            # the reader finds images by extension and decodes them by content: an unknown extension (.tiff, .jfif)
            # is read as what it really is
            ext = args.image.suffix.lower() if args.image.suffix.lower() in IMAGE_EXTENSIONS else ".jpg"
            try:
                (data / f"post{ext}").write_bytes(read_capped(args.image, MAX_IMAGE_BYTES)[0])
            except OSError as exc:
                raise cli.UserError(f"--image {args.image}: {getattr(exc, 'detail', None) or exc}") from None
            img = load_image(data, "post")
            if not img.ok:
                warnings.append(f"--image {args.image} cannot be used ({img.status}: {img.detail}); predicted "
                                "without it (a grey placeholder, as for a dataset post with a broken image)")
        if args.text_file is not None:
            try:
                (data / "post.txt").write_bytes(read_capped(args.text_file, MAX_TEXT_BYTES, cut=True)[0])
            except OSError as exc:
                raise cli.UserError(f"--text-file {args.text_file}: {getattr(exc, 'detail', None) or exc}") from None
        else:
            (data / "post.txt").write_text(args.text or "", encoding="utf-8")
        txt = read_text(data, "post")
        if txt.truncated:
            warnings.append(f"the text was cut to its first {MAX_TEXT_BYTES:,} bytes")
        proba = member_proba(members, views, bias, ["post"], data, args.cache_dir, args.batch_size,
                             progress=False, check_files=False)[0][0]
    label = LABELS[int(proba.argmax())]
    probs = {lab: round(float(proba[k]), 4) for k, lab in enumerate(LABELS)}
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    if args.json:
        print(json.dumps({"label": label, "probabilities": probs, "model": str(ckpt),
                          "image": str(args.image) if args.image else None,
                          "image_used": args.image is not None and not any(w.startswith("--image") for w in warnings),
                          "warnings": warnings}))
    else:
        print(f"{label}  ({', '.join(f'{lab} {v:.3f}' for lab, v in probs.items())})  model: {ckpt}")
    return 0


def default_model() -> Path:
    """predict_test's default: the final recipe's ensemble when it exists, else :func:`default_checkpoint`."""
    from msa.ensemble import is_ensemble

    final = REPO / "final" / "results" / "best"
    return final if is_ensemble(final) else default_checkpoint()


def load_members(ckpt: Path):
    """``([(model, config), ...], bias, tta views)`` of a checkpoint folder or an ensemble folder, every member
    checked; the views (e.g. ``["hflip"]``) are the test-time augmentations the ensemble was evaluated with."""
    from msa.checkpoint import load_checkpoint
    from msa.data import LABELS
    from msa.ensemble import is_ensemble, read_ensemble
    from msa.features import TEXT_NORMALISATION

    if is_ensemble(ckpt):
        spec = read_ensemble(ckpt)
        members, bias, views = [load_checkpoint(d) for d in spec["member_dirs"]], spec.get("bias"), spec.get("tta", [])
    else:
        members, bias, views = [load_checkpoint(ckpt)], None, []
    first = members[0][1]
    for _, config in members:
        if list(config.get("labels", [])) != list(LABELS):
            raise cli.UserError(f"{ckpt} predicts labels {config.get('labels')}, this project uses {list(LABELS)}")
        if config.get("text_normalisation", TEXT_NORMALISATION) != TEXT_NORMALISATION:
            raise cli.UserError(f"{ckpt} was trained with another text normalisation; retrain it with this version")
        if config.get("backbones") != first.get("backbones"):
            raise cli.UserError(f"the members of {ckpt} were trained on different backbones")
    return members, bias, list(views)


def default_checkpoint() -> Path:
    for phase in ("phase4", "phase3", "phase1"):
        best = REPO / phase / "results" / "best" / "checkpoint"
        if (best / "model.safetensors").is_file():
            return best
    found = sorted(REPO.glob("phase*/results/*/checkpoint/model.safetensors"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise cli.UserError("no trained model found: train one first (`make run DATA=path/to/dataset`, or "
                            "`make demo` on synthetic data; the quickest single model: python phase1/main.py "
                            "--data-root DATA), or pass --checkpoint DIR")
    return found[-1].parent


def backbones_for(config: dict):
    """Rebuild the backbones a checkpoint was trained on and refuse any whose weights differ."""
    from msa.backbones import image_backbone, text_backbone

    built = {}
    for modality, loader in (("text", text_backbone), ("image", image_backbone)):
        info = config.get("backbones", {}).get(modality)
        if info is None:
            built[modality] = None
            continue
        pre = info.get("preprocessing", {})
        kw = {"pooling": pre.get("pooling"), "max_length": pre.get("max_length")} if modality == "text" else {}
        bb = loader(info["name"], **{k: v for k, v in kw.items() if v})
        if bb.info.weights_sha256 != info["weights_sha256"] or bb.info.key() != info["key"]:
            raise cli.UserError(
                f"the checkpoint was trained on {modality} backbone {info['name']} with weights "
                f"{info['weights_sha256'][:12]}, but what loads under that name now has "
                f"{bb.info.weights_sha256[:12]} (or different preprocessing): its features would not match")
        built[modality] = bb
    return built["text"], built["image"]


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


def main(argv=None) -> int:
    import pandas as pd

    from msa.data import LABELS, read_index
    from msa.io import write_csv, write_text

    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)
    ckpt = args.checkpoint or default_model()
    if args.image is not None or args.text is not None or args.text_file is not None:
        return predict_one(args, ckpt)
    if args.json:
        raise cli.UserError("--json is for one post (--image / --text / --text-file)")
    members, bias, views = load_members(ckpt)
    config = members[0][1]
    test_file = args.test_file or Path(args.data_root) / "test_without_label.txt"
    test = read_index(test_file, labelled=False)
    for p in test.problems:
        log.warning("%s: %s %s (%s)", test_file, p.reason, p.guid, p.detail)
    proba, views = member_proba(members, views, bias, test.guids, Path(args.data_root) / "data", args.cache_dir,
                                args.batch_size)
    tags = [LABELS[k] for k in proba.argmax(1)]
    assert len(tags) == len(test.guids)
    out = write_text(args.output, "guid,tag\n" + "".join(f"{g},{t}\n" for g, t in zip(test.guids, tags)))
    if args.probabilities:
        frame = pd.DataFrame({"guid": test.guids, "tag": tags})
        for k, lab in enumerate(LABELS):
            frame[f"p_{lab}"] = proba[:, k].round(6)
        write_csv(args.probabilities, frame)
    counts = pd.Series(tags).value_counts().reindex(LABELS, fill_value=0)
    provenance = args.provenance or (DEFAULT_PROVENANCE if Path(args.output).resolve() == DEFAULT_OUTPUT.resolve()
                                     else Path(f"{args.output}.provenance.json"))
    if provenance:
        write_provenance(provenance, out, ckpt, config, {lab: int(n) for lab, n in counts.items()},
                         n_members=len(members), bias=bias, tta=views)
    print(f"{len(tags)} predictions from {ckpt} -> {out} "
          f"({', '.join(f'{lab} {n}' for lab, n in counts.items())})")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
