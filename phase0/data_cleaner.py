"""Phase 0a: checks every post of DATA (train.txt, test_without_label.txt, data/*), removes broken and
duplicate ones, and writes the cleaned index, the audit and the persisted splits to dataset/.

Run from the repository root:

    python phase0/data_cleaner.py --data-root dataset/
    python phase0/data_cleaner.py --data-root ../shared/mvsa --val-ratio 0.1 --seed 42 --folds 5

Reads (never modifies): <data-root>/train.txt, <data-root>/test_without_label.txt, <data-root>/data/{guid}.*
Writes under --work-dir (default: the project's dataset/ folder):
    train_cleaned.txt      guid,tag of the labelled rows kept for training/validation
    data_audit.csv         guid,reason,label,detail,action,source: every problem found and what was done
    data_inventory.csv     one row per guid (train and test): text encoding, image format/size, hashes
    splits/default.csv     guid,split (train/val), stratified, seeded; splits/cv{K}-{i}.csv with --folds K
    phase0_manifest.json   inputs (paths, sha256), arguments, counts, timings, and the sha256 of each file above

These files are one set, written as a unit: everything is computed and checked first (an existing split file that
differs from the new one is refused before anything is written), then all files go to temporaries that are renamed
into place, phase0_manifest.json last. A refused or failed run leaves the previous set whole; later phases compare
the files they read with the manifest's hashes.

The up-to-date check hashes the two index files, but fingerprints the data folder by file names, sizes and
modification times only (no contents are read): a data file edited in place that keeps its size and mtime is not
noticed, so pass --force after such an edit.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from msa import cleaning, cli, stamp


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(
        description=__doc__.split("\n\n")[0] + "\n\n" + "\n\n".join(__doc__.split("\n\n")[1:]),
        epilog="Row policy: rows whose index line is malformed, whose guid is not a plain file stem, whose tag "
               "is unknown, or that repeat a guid are skipped and audited; a guid listed with two different tags "
               "is removed. A labelled row whose image or text cannot be used is removed (kept with a "
               "placeholder under --keep-partial). Test rows are never removed: unusable files get placeholders "
               "so every test guid still gets a prediction.")
    cli.add_data_args(p)
    p.add_argument("--train-index", type=Path, default=None, help="labelled index (default <data-root>/train.txt)")
    p.add_argument("--test-index", type=Path, default=None,
                   help="unlabelled index (default <data-root>/test_without_label.txt; optional)")
    p.add_argument("--data-dir", type=Path, default=None, help="folder of {guid}.jpg/.txt (default <data-root>/data)")
    p.add_argument("--val-ratio", type=cli.open_fraction, default=0.1,
                   help="validation share of the stratified hold-out split")
    p.add_argument("--seed", type=int, default=42, help="seed of the split and the folds")
    p.add_argument("--folds", type=cli.non_negative_int, default=5,
                   help="also write K stratified folds as splits cv{K}-0 .. cv{K}-{K-1} (0 = none)")
    p.add_argument("--phash-threshold", type=cli.non_negative_int, default=4,
                   help="max Hamming distance (of 64 bits) between perceptual hashes for two images to be the same")
    p.add_argument("--keep-partial", action="store_true",
                   help="keep labelled rows whose image or text is unusable (with a placeholder) instead of "
                        "removing them")
    p.add_argument("--no-dedup", action="store_true", help="skip near-duplicate detection")
    p.add_argument("--force", action="store_true",
                   help="recompute even when up to date with the inputs of the last finished run, and overwrite "
                        "existing split files made from a different cleaned set or with other settings (this "
                        "changes the validation set every later phase reports on). The check hashes the index "
                        "files but fingerprints the data folder by file names, sizes and modification times, not "
                        "contents: after editing a data file in place with its size and mtime kept, pass --force")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)
    t0 = time.time()
    data_root = Path(args.data_root)
    work_dir = cli.work_dir(args)
    train_index = args.train_index or data_root / "train.txt"
    test_index = args.test_index or data_root / "test_without_label.txt"
    data_dir = args.data_dir or data_root / "data"
    cleaning.check_folders(data_root, data_dir, work_dir)
    stamp_path = work_dir / "phase0_inputs.json"
    inputs = stamp.inputs_of(args, files=[train_index, test_index], code=[Path(__file__)],
                             extra={"data_listing": stamp.listing_digest(data_dir)})
    if stamp.check(stamp_path, inputs, args.force, "phase 0 cleaning"):
        print(f"phase 0 cleaning: up to date ({work_dir}); --force recomputes")
        return 0
    cleaning.remove_leftovers(work_dir)

    c = cleaning.clean(train_index, test_index, data_dir, keep_partial=args.keep_partial, dedup=not args.no_dedup,
                       threshold=args.phash_threshold)
    groups = cleaning.image_groups(c.kept, args.phash_threshold)
    splits = cleaning.plan_splits(args, c.cleaned, groups)
    cleaning.check_splits(args, work_dir, splits)  # a refusal comes before anything is written
    summary = cleaning.summary(c, groups, splits["default"]["split"])
    head = cleaning.manifest_head(args, data_root, data_dir, train_index, test_index, c.test is not None)
    manifest: dict = {}

    def make_manifest(hashes: dict) -> dict:
        manifest.update(head, **hashes, summary=summary, seconds=round(time.time() - t0, 2),
                        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        return manifest

    written = cleaning.write_handoff(work_dir, c.inventory, c.audit, c.cleaned, splits, make_manifest)
    stamp.write(stamp_path, inputs, [written[-1], *written[:-1]])
    print_summary(summary, work_dir, manifest["seconds"])
    return 0


def print_summary(s: dict, work_dir: Path, seconds: float) -> None:
    print(f"\nphase 0 cleaning done in {seconds:.1f}s -> {work_dir}")
    print(f"  labelled rows read : {s['labelled_rows']}")
    print(f"  kept               : {s['kept']}  ({', '.join(f'{k} {v}' for k, v in s['label_counts'].items())})")
    if s["removed_by_reason"]:
        print("  removed/skipped    : " + ", ".join(f"{k} {v}" for k, v in s["removed_by_reason"].items()))
    else:
        print("  removed/skipped    : none")
    print(f"  test rows          : {s['test_rows']} ({s['test_rows_with_placeholders']} with placeholders)")
    print(f"  split 'default'    : train {s['split_sizes']['train']}, val {s['split_sizes']['val']}")
    print(f"  text encodings     : {', '.join(f'{k} {v}' for k, v in s['encodings'].items())}")


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
