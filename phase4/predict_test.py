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

from msa import cli, stamp
from msa.predict import default_model

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
    stamp.add_force_arg(p)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def predict_one(args, ckpt: Path) -> int:
    """The --image / --text mode: one post (read and preprocessed exactly as a dataset post), printed."""
    import json

    from msa.data import LABELS
    from msa.predict import predict_post

    proba, warnings = predict_post(ckpt, args.image, args.text, args.text_file, args.cache_dir, args.batch_size)
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


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)
    ckpt = args.checkpoint or default_model(REPO)
    if args.image is not None or args.text is not None or args.text_file is not None:
        return predict_one(args, ckpt)
    if args.json:
        raise cli.UserError("--json is for one post (--image / --text / --text-file)")
    from msa.predict import model_files

    test_file = args.test_file or Path(args.data_root) / "test_without_label.txt"
    provenance = args.provenance or (DEFAULT_PROVENANCE if Path(args.output).resolve() == DEFAULT_OUTPUT.resolve()
                                     else Path(f"{args.output}.provenance.json"))
    # up to date: the same model files, test index, posts (names, sizes, times), arguments and code
    stamp_path = Path(provenance).parent / f"inputs_{Path(provenance).stem}.json"
    inputs = stamp.inputs_of(args, files=[test_file, *model_files(ckpt)], code=[Path(__file__)],
                             extra={"model": str(Path(ckpt).resolve()),
                                    "data_listing": stamp.listing_digest(Path(args.data_root) / "data")},
                             ignore=("batch_size",))
    if stamp.check(stamp_path, inputs, args.force, "predict_test"):
        print(f"predict_test: up to date ({args.output}); --force recomputes")
        return 0
    import pandas as pd

    from msa.data import LABELS, read_index
    from msa.io import write_csv, write_text
    from msa.predict import load_members, member_proba, write_provenance

    members, bias, views = load_members(ckpt)
    config = members[0][1]
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
    write_provenance(provenance, out, ckpt, config, {lab: int(n) for lab, n in counts.items()},
                     n_members=len(members), bias=bias, tta=views)
    stamp.write(stamp_path, inputs, [out, provenance] + ([args.probabilities] if args.probabilities else []))
    print(f"{len(tags)} predictions from {ckpt} -> {out} "
          f"({', '.join(f'{lab} {n}' for lab, n in counts.items())})")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
