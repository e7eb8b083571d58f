"""The cleaning stage (phase 0a): what every post's files hold, the problems found in them, near-duplicates, the
splits these settings produce and the hand-off set written as one unit. ``phase0/data_cleaner.py`` is the front
end (flags, the up-to-date check, the summary it prints); the readers (index, texts, images) are in
:mod:`msa.data`, the split makers in :mod:`msa.splits`.

* :func:`check_folders`, :func:`remove_leftovers`: before any work;
* :func:`clean`: the indexes read, every post inspected, the unusable and duplicate rows removed
  (:class:`Cleaned`), from :func:`read_indexes`, :func:`inspect_sample`, :func:`sample_problems`,
  :func:`resolve_duplicates`;
* :func:`image_groups`, :func:`plan_splits`, :func:`check_splits`: the splits, refused before anything is written
  when they would silently replace a different one;
* :func:`summary`, :func:`manifest_head`, :func:`write_handoff`: what is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from msa import cli
from msa.data import (
    AUDIT_COLUMNS,
    LABELS,
    TRUNCATED_DETAIL,
    Problem,
    dedup_key,
    load_image,
    read_index,
    read_text,
)
from msa.io import atomic_files, file_sha256, remove_stale_temps
from msa.splits import (
    load_split,
    split_path,
    stratified_folds,
    stratified_holdout,
)

log = logging.getLogger("phase0.cleaner")  # the stage's messages keep the name they have always had

TEXT_REASONS = {"missing": "missing_text", "empty": "empty_text", "bad_guid": "bad_guid"}
#: the hand-off files directly under --work-dir (the splits are under splits/), manifest last
HANDOFF_FILES = ("data_inventory.csv", "data_audit.csv", "train_cleaned.txt", "phase0_manifest.json")
IMAGE_REASONS = {"missing": "missing_image", "empty_file": "empty_image_file", "truncated": "truncated_image",
                 "undecodable": "undecodable_image", "decompression_bomb": "decompression_bomb",
                 "bad_guid": "bad_guid"}


# ------------------------------------------------------------------------------------------- folders
def check_folders(data_root: Path, data_dir: Path, work_dir: Path) -> None:
    """A missing data folder, or a work folder that is the data folder, is one clear error."""
    if not data_dir.is_dir():
        raise cli.UserError(f"data folder {data_dir} not found: expected {data_root}/data/{{guid}}.jpg and "
                            f"{{guid}}.txt next to train.txt (see README, 'Dataset layout')")
    if work_dir.resolve() == data_dir.resolve():
        raise cli.UserError("--work-dir must not be the data folder itself")


def remove_leftovers(work_dir: Path) -> None:
    """Remove what a killed earlier run left (only phase 0's own temporaries)."""
    for name in HANDOFF_FILES:
        for leftover in work_dir.glob(f".{name}.*.tmp"):
            leftover.unlink(missing_ok=True)
    remove_stale_temps(work_dir / "splits")


# ------------------------------------------------------------------------------------------- inspection
def inspect_sample(data_dir: Path, guid: str) -> dict:
    """Everything phase 0 needs to know about one guid's files (no exception escapes)."""
    import imagehash

    row: dict = {"guid": guid}
    txt = read_text(data_dir, guid)
    row.update(text_status=txt.status, text_encoding=txt.encoding, text_repaired=txt.repaired,
               text_chars=len(txt.raw), text_words=len(txt.raw.split()), text_detail=txt.detail,
               text_key=dedup_key(txt.raw) if txt.ok else "",
               text_sha256=hashlib.sha256(txt.raw.encode("utf-8")).hexdigest() if txt.ok else "")
    img = load_image(data_dir, guid, draft_size=(128, 128))
    row.update(image_status=img.status, image_file=img.path.name if img.path else "", image_format=img.format,
               image_mode=img.mode, image_width=img.size[0], image_height=img.size[1],
               image_ext_mismatch=img.ext_mismatch, image_detail=img.detail,
               image_bytes=img.path.stat().st_size if img.path and img.path.exists() else 0,
               image_sha256=file_sha256(img.path) if img.path and img.path.exists() else "",
               phash=str(imagehash.phash(img.image)) if img.ok else "")
    return row


def sample_problems(row: dict, label: str, source: str, labelled: bool, keep_partial: bool) -> list[Problem]:
    """Audit records for one inspected sample; marks ``row['usable']``."""
    out: list[Problem] = []
    text_ok, image_ok = row["text_status"] == "ok", row["image_status"] == "ok"
    usable = (text_ok and image_ok) or (keep_partial and (text_ok or image_ok)) or not labelled
    action = "removed" if not usable else "placeholder"
    if row["text_status"] == "bad_guid":
        return out  # already audited by the index reader
    if not text_ok:
        out.append(Problem(row["guid"], TEXT_REASONS[row["text_status"]], label, row["text_detail"], action, source))
    elif TRUNCATED_DETAIL in row["text_detail"]:  # longer than MAX_TEXT_BYTES: its start is used
        out.append(Problem(row["guid"], "text_truncated", label, row["text_detail"], "kept", source))
    elif row["text_repaired"]:
        out.append(Problem(row["guid"], "text_repaired", label, row["text_detail"], "repaired", source))
    elif "replaced" in row["text_detail"]:
        out.append(Problem(row["guid"], "text_lossy_decode", label, row["text_detail"], "kept", source))
    if not image_ok:
        out.append(Problem(row["guid"], IMAGE_REASONS[row["image_status"]], label, row["image_detail"], action,
                           source))
    elif row["image_ext_mismatch"]:
        out.append(Problem(row["guid"], "image_format_mismatch", label, row["image_detail"], "kept", source))
    row["usable"] = usable
    return out


def inspect_all(data_dir: Path, guids: list[str], desc: str, workers: int | None = None) -> pd.DataFrame:
    """:func:`inspect_sample` of every guid, in order, in ``workers`` threads (None: one per core; decoding and
    hashing the images release the GIL: 1.6x on two cores, the same rows)."""
    from concurrent.futures import ThreadPoolExecutor
    from functools import partial

    from tqdm import tqdm

    from msa.workers import cores

    workers = cores() if workers is None else max(1, int(workers))
    with ThreadPoolExecutor(workers, thread_name_prefix="inspect") as pool:
        rows = list(tqdm(pool.map(partial(inspect_sample, data_dir), guids), total=len(guids), desc=desc,
                         unit="post", disable=None))
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------- duplicates
def _hash_bits(hexes: list[str]) -> np.ndarray:
    return np.array([[int(b) for b in bin(int(h, 16))[2:].zfill(64)] for h in hexes], dtype=np.float32)


def near_duplicate_groups(frame: pd.DataFrame, threshold: int, same_text: bool = True) -> list[list[int]]:
    """Groups (row positions) of samples whose images are perceptually the same (Hamming distance of their
    64-bit pHash <= threshold) and, with ``same_text``, whose normalised texts are equal too."""
    pos = [i for i, h in enumerate(frame["phash"]) if h]
    if len(pos) < 2:
        return []
    bits = _hash_bits([frame["phash"].iloc[i] for i in pos])
    keys = [frame["text_key"].iloc[i] for i in pos]
    parent = list(range(len(pos)))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for start in range(0, len(pos), 1024):  # Hamming distances by matrix products, in blocks
        blk = bits[start:start + 1024]
        dist = blk @ (1.0 - bits.T) + (1.0 - blk) @ bits.T
        for a, b in zip(*np.nonzero(dist <= threshold + 0.5)):
            a += start
            if a < b and (not same_text or keys[a] == keys[b]):
                ra, rb = find(a), find(b)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for i in range(len(pos)):
        groups.setdefault(find(i), []).append(pos[i])
    return [g for g in groups.values() if len(g) > 1]


def resolve_duplicates(frame: pd.DataFrame, threshold: int, source: str) -> tuple[set[int], list[Problem]]:
    """Same-label groups keep their first row; groups with conflicting labels are removed entirely."""
    drop: set[int] = set()
    problems: list[Problem] = []
    for group in near_duplicate_groups(frame, threshold):
        guids = frame["guid"].iloc[group].tolist()
        tags = frame["tag"].iloc[group].tolist()
        if len(set(tags)) == 1:
            for i, g in zip(group[1:], guids[1:]):
                drop.add(i)
                problems.append(Problem(g, "near_duplicate", tags[0],
                                        f"same image and text as {guids[0]} (kept)", "removed", source))
        else:
            detail = "conflicting labels in a duplicate group: " + ", ".join(f"{g}={t}" for g, t in zip(guids, tags))
            for i, g, t in zip(group, guids, tags):
                drop.add(i)
                problems.append(Problem(g, "conflicting_duplicates", t, detail, "removed", source))
    return drop, problems


def image_groups(kept: pd.DataFrame, threshold: int) -> list[int]:
    """A group id per row: posts that share an image (same pHash) get the same id, so a split never puts a
    reposted image on both sides."""
    group = list(range(len(kept)))
    for members in near_duplicate_groups(kept, threshold, same_text=False):
        for i in members:
            group[i] = members[0]
    return group


# ------------------------------------------------------------------------------------------- cleaning
@dataclass
class Cleaned:
    """What :func:`clean` found: the indexes read, every problem, the inventory of every post (labelled and
    test), the audit, the labelled rows kept (with their inspection columns) and their ``guid,tag`` index."""
    train: object
    test: object | None
    source: str
    problems: list[Problem]
    inventory: pd.DataFrame
    audit: pd.DataFrame
    kept: pd.DataFrame
    cleaned: pd.DataFrame
    near_duplicates: int


def read_indexes(train_index: Path, test_index: Path) -> tuple[object, object | None, list[Problem]]:
    """The labelled index, the test index (``None`` when there is none) and the problems found in them, with a
    ``train_test_overlap`` record for each guid that is in both."""
    train = read_index(train_index, labelled=True)
    problems: list[Problem] = list(train.problems)
    test = read_index(test_index, labelled=False) if Path(test_index).is_file() else None
    if test is None:
        log.warning("no test index at %s: only the labelled rows are checked", test_index)
    else:
        problems += test.problems
        overlap = set(train.guids) & set(test.guids)
        if overlap:
            log.warning("%d guids appear in both the labelled and the test index (e.g. %s)",
                        len(overlap), sorted(overlap)[0])
            problems += [Problem(g, "train_test_overlap", "", "guid is also in the test index", "kept",
                                 Path(test_index).name) for g in sorted(overlap)]
    return train, test, problems


def inspect_labelled(data_dir: Path, train, source: str, keep_partial: bool,
                     problems: list[Problem]) -> pd.DataFrame:
    """The labelled posts inspected, with ``source``, ``label`` and ``usable`` columns; adds their problems."""
    tr = inspect_all(data_dir, train.guids, "phase0: checking labelled posts")
    tr.insert(1, "source", "train")
    tr.insert(2, "label", train.rows["tag"].values)
    for i, row in tr.iterrows():
        rec = row.to_dict()
        problems += sample_problems(rec, rec["label"], source, labelled=True, keep_partial=keep_partial)
        tr.loc[i, "usable"] = rec["usable"]
    return tr


def inspect_test(data_dir: Path, test, test_index: Path, problems: list[Problem]) -> pd.DataFrame:
    """The test posts inspected (all usable: unusable files get placeholders); adds their problems."""
    te = inspect_all(data_dir, test.guids, "phase0: checking test posts")
    te.insert(1, "source", "test")
    te.insert(2, "label", "null")
    for i, row in te.iterrows():
        rec = row.to_dict()
        problems += sample_problems(rec, "", Path(test_index).name, labelled=False, keep_partial=True)
        te.loc[i, "usable"] = True
    return te


def clean(train_index: Path, test_index: Path, data_dir: Path, keep_partial: bool, dedup: bool,
          threshold: int) -> Cleaned:
    """Read both indexes, inspect every post, remove the unusable labelled rows and (with ``dedup``) the
    near-duplicates. No labelled row left is one clear error."""
    train, test, problems = read_indexes(train_index, test_index)
    src = Path(train_index).name
    tr = inspect_labelled(data_dir, train, src, keep_partial, problems)
    frames = [tr]
    if test is not None:
        frames.append(inspect_test(data_dir, test, test_index, problems))

    kept = tr[tr["usable"].astype(bool)].reset_index(drop=True).rename(columns={"label": "tag"})
    n_dups = 0
    if dedup:
        drop, dup_problems = resolve_duplicates(kept, threshold, src)
        problems += dup_problems
        n_dups = len(drop)
        kept = kept.drop(index=sorted(drop)).reset_index(drop=True)
    if kept.empty:
        reasons = pd.Series([pr.reason for pr in problems if pr.source == src], dtype=object).value_counts()
        raise cli.UserError(f"no labelled row of {train_index} survived cleaning ("
                            + (", ".join(f"{k} {v}" for k, v in reasons.head(5).items()) or "no rows")
                            + "); nothing was written")

    inventory = pd.concat(frames, ignore_index=True).drop(columns=["text_key", "usable"])
    audit = pd.DataFrame([p.as_dict() for p in problems], columns=AUDIT_COLUMNS)
    return Cleaned(train=train, test=test, source=src, problems=problems, inventory=inventory, audit=audit,
                   kept=kept, cleaned=kept[["guid", "tag"]], near_duplicates=n_dups)


# ------------------------------------------------------------------------------------------- splits
def plan_splits(args, cleaned: pd.DataFrame, groups: list[int]) -> dict[str, pd.DataFrame]:
    """Every split these settings produce (guid,split frames), by name: ``default`` and the ``cv{K}-{i}`` folds."""
    guids, labels = cleaned["guid"].tolist(), cleaned["tag"].tolist()
    wanted = {"default": stratified_holdout(guids, labels, args.val_ratio, args.seed, groups)}
    if args.folds:
        for i, fold in enumerate(stratified_folds(guids, labels, args.folds, args.seed, groups)):
            wanted[f"cv{args.folds}-{i}"] = fold
    return {name: frame[["guid", "split"]] for name, frame in wanted.items()}


def check_splits(args, work_dir: Path, wanted: dict[str, pd.DataFrame]) -> None:
    """Refuse (before anything is written) when an existing split file differs from the one computed now."""
    if args.force:
        return
    for name, frame in wanted.items():
        path = split_path(work_dir, name)
        if not path.is_file():
            continue
        old = load_split(work_dir, name).frame
        same = (set(old["guid"]) == set(frame["guid"])
                and old.set_index("guid")["split"].to_dict() == frame.set_index("guid")["split"].to_dict())
        if not same:
            raise cli.UserError(
                f"{path} exists and differs from the split these settings produce (a different cleaned set, "
                "seed, ratio or folds). Every later phase reports on it, so it is not replaced silently: "
                "pass --force to overwrite it, or --work-dir to write elsewhere. Nothing was written.")


# ------------------------------------------------------------------------------------------- hand-off set
def summary(c: Cleaned, groups: list[int], default: pd.Series) -> dict:
    """The counts the manifest records and the front end prints (``default``: the default split's column)."""
    audit, src = c.audit, c.source
    removed = audit[audit["action"].isin(["removed", "skipped"]) & (audit["source"] == src)]
    return {
        "labelled_rows": c.train.n_data_lines,
        "kept": int(len(c.cleaned)),
        "removed_by_reason": {k: int(v) for k, v in removed["reason"].value_counts().items()},
        "near_duplicates_removed": c.near_duplicates,
        "image_groups_kept_together": int(len(groups) - len(set(groups))),
        "test_rows": int(len(c.test.rows)) if c.test is not None else 0,
        "test_rows_with_placeholders": int(audit.loc[(audit["action"] == "placeholder")
                                                   & (audit["source"] != src), "guid"].nunique()),
        "label_counts": {lab: int((c.cleaned["tag"] == lab).sum()) for lab in LABELS},
        "split_sizes": {"train": int((default == "train").sum()), "val": int((default == "val").sum())},
        "encodings": {k: int(v) for k, v in c.inventory["text_encoding"].replace("", "none").value_counts().items()},
    }


def manifest_head(args, data_root: Path, data_dir: Path, train_index: Path, test_index: Path,
                  has_test: bool) -> dict:
    """The manifest's first entries: the inputs (paths and sha256 of the indexes) and the arguments."""
    return {
        "data_root": str(data_root.resolve()), "data_dir": str(Path(data_dir).resolve()),
        "train_index": {"path": str(Path(train_index).resolve()), "sha256": file_sha256(train_index)},
        "test_index": ({"path": str(Path(test_index).resolve()), "sha256": file_sha256(test_index)}
                       if has_test else None),
        "arguments": cli.args_record(args),
    }


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    frame.to_csv(path, index=False, lineterminator="\n")  # the format of msa.io.write_csv / msa.splits.write_split


def write_handoff(work_dir: Path, inventory: pd.DataFrame, audit: pd.DataFrame, cleaned: pd.DataFrame,
                  splits: dict[str, pd.DataFrame], make_manifest) -> list[Path]:
    """Write the hand-off set as one unit (see :func:`msa.io.atomic_files`): inventory, audit, cleaned index,
    splits, then the manifest, whose rename comes last. ``make_manifest(hashes)`` returns the manifest given the
    sha256 of the other files (``train_cleaned_sha256``, ``audit_sha256``, ``inventory_sha256``, ``splits``).
    Returns the paths written, manifest last."""
    inv, aud, cln, man = (work_dir / name for name in HANDOFF_FILES)
    spl = {name: split_path(work_dir, name) for name in splits}
    targets = [inv, aud, cln, *spl.values(), man]
    with atomic_files(targets) as temps:
        tmp = dict(zip(targets, temps))
        _write_csv(tmp[inv], inventory)
        _write_csv(tmp[aud], audit)
        tmp[cln].write_text("guid,tag\n" + "".join(f"{g},{t}\n" for g, t in cleaned[["guid", "tag"]].values),
                            encoding="utf-8")
        for name, frame in splits.items():
            _write_csv(tmp[spl[name]], frame)
        manifest = make_manifest({"train_cleaned_sha256": file_sha256(tmp[cln]),
                                  "audit_sha256": file_sha256(tmp[aud]),
                                  "inventory_sha256": file_sha256(tmp[inv]),
                                  "splits": {name: file_sha256(tmp[p]) for name, p in spl.items()}})
        tmp[man].write_text(json.dumps(manifest, indent=2, ensure_ascii=False, default=str) + "\n",
                            encoding="utf-8")  # the format of msa.io.write_json
    others = sorted(set((work_dir / "splits").glob("*.csv")) - set(spl.values()))
    if others:
        log.warning("%s also holds %s, not made by this run and not in %s", work_dir / "splits",
                    ", ".join(p.name for p in others), man.name)
    return targets
