"""MMSA feature files (CMU-MOSI, CMU-MOSEI, CH-SIMS): a safe reader, validation and repair, a safetensors copy.

The MMSA toolkit (github.com/thuiar/MMSA) publishes its processed datasets as pickles of this layout::

    {"train": {...}, "valid": {...}, "test": {...}}, each split a dict of
        text        (N, L_t, 768)  BERT token features            audio   (N, L_a, D_a)   vision (N, L_v, D_v)
        text_bert   (N, 3, L_t)    token ids / mask / segments    audio_lengths, vision_lengths  (N,)
        id, raw_text, annotations  N strings                      regression_labels  (N,)
        regression_labels_T / _A / _V  (CH-SIMS: unimodal labels)   classification_labels (deprecated)

Reading. Unpickling runs code, so :func:`restricted_load` admits only the globals a pickle of numpy arrays and
plain containers needs (``numpy.ndarray``, ``numpy.dtype``, numpy's array/scalar reconstructors, ``set`` /
``frozenset`` / ``bytearray`` / ``complex`` / ``OrderedDict`` and a latin-1-only ``_codecs.encode`` that protocol-2
pickles use for array bytes). Any other global is refused before it is looked up, with a message naming the file
and the global, so nothing a hostile file names is imported or called. :func:`convert` writes a copy as
``X.safetensors`` (every numeric array, key ``split/key``) + ``X.json`` (the string fields, the arrays' names and
shapes, the source's sha256), which :func:`read_raw` and :func:`load_mmsa` load without any unpickling; a copy whose
JSON is not an object of that layout, lists arrays the safetensors file does not hold (or the reverse), records
other shapes, or holds string lists of another length than the split is an :class:`MMSAFormatError` naming the file.

Validation (:func:`load_mmsa`). A missing split or a missing ``text`` / ``audio`` / ``vision`` /
``regression_labels`` is an :class:`MMSAFormatError` naming the split and the key; so are an empty split (no
sample), features that are not (N, L, D) with L, D >= 1, feature widths that differ between splits, fields whose N
differs within a split (every field and its N listed), labels that are not finite, and negative or non-integer
lengths. Repairs are logged and recorded in
:attr:`MMSAData.repairs`: NaN / +inf / -inf features (MOSI's audio has -inf) are replaced by 0 and counted, lengths
longer than the sequence are clipped to it, missing ``*_lengths`` mean the full length, missing ids become
``<split>_<row>``, unusable unimodal labels are dropped. Text lengths come from ``text_bert``'s mask row when it is
there (BERT's [CLS] .. [SEP] positions), else the full length. A length of 0 is kept (the models treat that sample
as one all-padding frame) and counted.

:func:`write_synthetic` writes a small file of this layout with a planted learnable signal, variable lengths and
-inf audio entries, for tests and demos.
"""

from __future__ import annotations

import collections
import io
import json
import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from msa.cli import UserError
from msa.io import atomic_path, file_sha256, write_json

log = logging.getLogger(__name__)

__all__ = [
    "CONVERTED_FORMAT",
    "MODALITIES",
    "MMSAData",
    "MMSAFormatError",
    "SPLITS",
    "Split",
    "UnsafePickleError",
    "convert",
    "converted_paths",
    "is_converted",
    "load_mmsa",
    "read_raw",
    "restricted_load",
    "write_synthetic",
]

SPLITS = ("train", "valid", "test")
MODALITIES = ("text", "audio", "vision")
LABEL_KEY = "regression_labels"
LENGTH_KEYS = {"audio": "audio_lengths", "vision": "vision_lengths"}
UNIMODAL_LABEL_KEYS = {"text": "regression_labels_T", "audio": "regression_labels_A", "vision": "regression_labels_V"}
STRING_KEYS = ("id", "raw_text", "annotations")
CONVERTED_FORMAT = "msa-mmsa-safetensors/1"


class MMSAFormatError(UserError, ValueError):
    """The feature file does not have the MMSA layout (a one-line ``error:`` in a CLI)."""


class UnsafePickleError(UserError, pickle.UnpicklingError):
    """The pickle names a global outside the allow-list: refused, nothing from it was imported or run."""


# ---------------------------------------------------------------------------------------- restricted pickle
def _latin1_encode(text, encoding="latin1"):
    """``_codecs.encode`` as protocol-2 pickles use it for array bytes (``encode(str, 'latin1')``), nothing else."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode is only allowed with latin1 text, got encoding {encoding!r}")
    return text.encode("latin1")


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The allowed globals: both numpy 1 (``numpy.core``) and numpy 2 (``numpy._core``) spellings map to the
    objects of the installed numpy, taken from numpy itself (never imported by a name from the file)."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{mod}.multiarray", "scalar")] = multiarray.scalar
        if hasattr(numeric, "_frombuffer"):
            allowed[(f"{mod}.numeric", "_frombuffer")] = numeric._frombuffer
    for mod in ("builtins", "__builtin__"):
        for name, obj in (("set", set), ("frozenset", frozenset), ("bytearray", bytearray), ("complex", complex)):
            allowed[(mod, name)] = obj
    allowed[("collections", "OrderedDict")] = collections.OrderedDict
    allowed[("_codecs", "encode")] = _latin1_encode
    return allowed


_ALLOWED: dict[tuple[str, str], Any] | None = None


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, fh, source: str):
        super().__init__(fh, encoding="latin1")  # latin1: numpy arrays in Python 2 pickles
        self.source = source

    def find_class(self, module: str, name: str):
        global _ALLOWED
        if _ALLOWED is None:
            _ALLOWED = _numpy_globals()
        obj = _ALLOWED.get((module, name))
        if obj is None:
            raise UnsafePickleError(
                f"{self.source}: refused to unpickle the global {module}.{name}: an MMSA feature file holds only "
                "numpy arrays and plain containers, and loading anything else could run code; nothing from the file "
                "was executed (if you trust the file, re-save it as plain numpy arrays)")
        return obj

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self.source}: refused a persistent id in the pickle (not a plain-data file)")


def restricted_load(path: str | Path) -> Any:
    """Unpickle ``path`` admitting only numpy arrays, dtypes and plain containers (see the module docstring).

    Raises :class:`UnsafePickleError` for any other global (nothing is imported or executed) and
    :class:`MMSAFormatError` when the file is missing or not a readable pickle."""
    path = Path(path)
    if path.is_dir():
        raise MMSAFormatError(f"{path} is a folder, not an MMSA feature file")
    if not path.is_file():
        raise MMSAFormatError(f"feature file not found: {path}")
    try:
        with open(path, "rb") as fh:
            return _RestrictedUnpickler(io.BufferedReader(fh, 1 << 20), str(path)).load()
    except UnsafePickleError:
        raise
    except MemoryError:
        raise MMSAFormatError(f"{path}: not enough memory to load the file") from None
    except Exception as exc:  # noqa: BLE001 - any other failure: not a readable pickle
        raise MMSAFormatError(f"{path}: not a readable pickle file ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200] if str(exc) else 'no detail'})") from None


# -------------------------------------------------------------------------------- converted (safetensors) copy
def converted_paths(path: str | Path) -> tuple[Path, Path]:
    """``(X.safetensors, X.json)`` for ``X.pkl`` / ``X.safetensors`` / ``X.json``."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix.lower() in (".pkl", ".pickle", ".safetensors", ".json") else path
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def is_converted(path: str | Path) -> bool:
    """True for the ``X.safetensors`` / ``X.json`` of a converted copy (by suffix)."""
    path = Path(path)
    return path.suffix.lower() in (".safetensors", ".json")


def _strings(value) -> list[str] | None:
    """A list of N strings from a string array / list (bytes decoded as UTF-8), else None."""
    if isinstance(value, np.ndarray):
        if value.ndim != 1 or value.dtype.kind not in "USO":
            return None
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        return None
    out = []
    for v in value:
        if isinstance(v, np.ndarray) and v.size == 1:  # MMSA's annotations can be 1-element arrays
            v = v.reshape(()).item()
        if isinstance(v, bytes):
            v = v.decode("utf-8", errors="replace")
        if not isinstance(v, (str, np.str_)):
            return None
        out.append(str(v))
    return out


def _numeric(value) -> np.ndarray | None:
    """``value`` as a numeric array (object arrays / lists of numbers converted), else None."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError):
        return None
    if arr.dtype.kind == "O":
        try:
            arr = arr.astype(np.float64)
        except (ValueError, TypeError):
            return None
    return arr if arr.dtype.kind in "biuf" else None


def convert(path: str | Path, out: str | Path | None = None) -> tuple[Path, Path]:
    """Write the MMSA pickle ``path`` as ``out.safetensors`` + ``out.json`` (default: next to ``path``).

    Every numeric array of every split goes to the safetensors file as ``split/key`` (dtype kept, -inf and NaN
    too: repairs happen when the copy is loaded, exactly as for the pickle); string fields (id, raw_text,
    annotations) go to the JSON file with the source's name, size and sha256. Anything else is skipped and logged.
    """
    from safetensors.numpy import save_file

    path = Path(path)
    if is_converted(path):
        raise MMSAFormatError(f"{path} is already a converted copy; --convert reads the MMSA pickle")
    st_path, json_path = converted_paths(out if out is not None else path)
    for p in (st_path, json_path):
        if p.is_dir():
            raise MMSAFormatError(f"cannot write the converted copy: {p} is a folder")
    raw = restricted_load(path)
    _check_top(raw, path)
    tensors: dict[str, np.ndarray] = {}
    meta: dict = {"format": CONVERTED_FORMAT, "source": path.name, "source_size": path.stat().st_size,
                  "source_sha256": file_sha256(path), "splits": {}, "skipped": []}
    for split in SPLITS:
        if split not in raw:
            continue
        entry = {"arrays": [], "strings": {}, "shapes": {}}
        for key, value in raw[split].items():
            key = str(key)
            numeric_array = isinstance(value, np.ndarray) and value.dtype.kind in "biuf"
            strings = None if numeric_array else _strings(value)
            arr = None if strings is not None else _numeric(value)
            if arr is not None:
                tensors[f"{split}/{key}"] = np.ascontiguousarray(arr)
                entry["arrays"].append(key)
                entry["shapes"][key] = list(arr.shape)
            elif strings is not None:
                entry["strings"][key] = strings
            else:
                meta["skipped"].append(f"{split}/{key}")
                log.warning("%s: %s/%s is neither numeric nor a list of strings: not converted", path, split, key)
        meta["splits"][split] = entry
    with atomic_path(st_path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": CONVERTED_FORMAT})
    write_json(json_path, meta)
    log.info("converted %s -> %s + %s (%d arrays)", path, st_path, json_path, len(tensors))
    return st_path, json_path


def _json_type(value) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _damaged(json_path: Path, what: str) -> MMSAFormatError:
    return MMSAFormatError(f"{json_path}: {what}; the converted copy is damaged or was edited (run --convert on the "
                           "pickle again)")


def _check_regular_file(p: Path) -> None:
    if p.is_dir():
        raise MMSAFormatError(f"{p} is a folder, not a file of a converted copy")
    if not p.is_file():
        raise MMSAFormatError(f"converted copy incomplete: {p} not found (run --convert on the pickle again)")


def _read_converted(path: Path) -> dict:
    """The dict of splits of a converted copy. The JSON is checked against the safetensors file before it is used:
    an object with this project's ``format`` and a ``splits`` object of ``{"arrays": [keys], "strings": {key: [N
    strings]}, "shapes": {key: [dims]}}`` (``shapes``: copies written before it existed have none), the arrays it
    lists are exactly the tensors of the safetensors file, with those shapes, and every string list holds one
    string per sample. Anything else is an :class:`MMSAFormatError` naming the file and what is wrong."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    st_path, json_path = converted_paths(path)
    for p in (st_path, json_path):
        _check_regular_file(p)
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # truncated, not UTF-8, nested too deep
        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise MMSAFormatError(f"{json_path} is not valid JSON ({detail}); run --convert on the pickle again") from None
    if not isinstance(meta, dict):
        raise _damaged(json_path, f"expected a JSON object, got {_json_type(meta)}")
    if meta.get("format") != CONVERTED_FORMAT:
        raise MMSAFormatError(f"{json_path} is not a converted MMSA file of this project "
                              f"(format {meta.get('format')!r}, expected {CONVERTED_FORMAT!r})")
    splits = meta.get("splits")
    if not isinstance(splits, dict):
        raise _damaged(json_path, "'splits' must be an object of split -> {arrays, strings}, got "
                                  + ("nothing" if "splits" not in meta else _json_type(splits)))
    try:
        with safe_open(str(st_path), framework="numpy") as fh:
            st_meta = fh.metadata() or {}
        arrays = load_file(str(st_path))
    except MemoryError:
        raise MMSAFormatError(f"{st_path}: not enough memory to load the file") from None
    except Exception as exc:  # noqa: BLE001 - a damaged file is a user-facing condition
        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise MMSAFormatError(f"{st_path} could not be read ({detail}): truncated or not a safetensors file; run "
                              "--convert on the pickle again") from None
    if st_meta.get("format") != CONVERTED_FORMAT:
        raise MMSAFormatError(f"{st_path} is not the safetensors file of a converted MMSA copy (format "
                              f"{st_meta.get('format')!r}, expected {CONVERTED_FORMAT!r})")
    raw: dict = {}
    listed: set[str] = set()
    for split, entry in splits.items():
        where = f"split {split!r}"
        if split not in SPLITS:
            raise _damaged(json_path, f"unknown {where} (a converted copy has {', '.join(SPLITS)})")
        if not isinstance(entry, dict):
            raise _damaged(json_path, f"{where} must be an object, got {_json_type(entry)}")
        for key, kind in (("arrays", list), ("strings", dict)):
            if key not in entry:
                raise _damaged(json_path, f"{where} has no {key!r}")
            if not isinstance(entry[key], kind):
                raise _damaged(json_path, f"{where}: {key!r} must be {_json_type(kind())}, got "
                                          f"{_json_type(entry[key])}")
        names = entry["arrays"]
        if not all(isinstance(k, str) for k in names) or len(set(names)) != len(names):
            raise _damaged(json_path, f"{where}: 'arrays' must list distinct key names")
        d: dict = {}
        for key in names:
            name = f"{split}/{key}"
            if name not in arrays:
                raise _damaged(json_path, f"{where} lists the array {key!r}, which {st_path.name} does not hold")
            d[key] = arrays[name]
            listed.add(name)
        shapes = entry.get("shapes")
        if shapes is not None:
            if not isinstance(shapes, dict):
                raise _damaged(json_path, f"{where}: 'shapes' must be an object, got {_json_type(shapes)}")
            for key, shape in shapes.items():
                if key not in d:
                    raise _damaged(json_path, f"{where}: 'shapes' names {key!r}, which is not one of its arrays")
                if list(d[key].shape) != shape:
                    raise _damaged(json_path, f"{where}: {key!r} has shape {list(d[key].shape)} in {st_path.name} "
                                              f"but {shape} in the JSON")
        n = int(d[LABEL_KEY].shape[0]) if LABEL_KEY in d and d[LABEL_KEY].ndim else None
        for key, values in entry["strings"].items():
            if key in d:
                raise _damaged(json_path, f"{where}: {key!r} is both an array and a list of strings")
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise _damaged(json_path, f"{where}: strings {key!r} must be an array of strings, got "
                                          f"{_json_type(values)}" + ("" if not isinstance(values, list) else
                                                                     " holding other values"))
            if n is not None and len(values) != n:
                raise _damaged(json_path, f"{where}: strings {key!r} hold {len(values)} values but the split has "
                                          f"{n} samples ({LABEL_KEY} in {st_path.name})")
            d[key] = list(values)
        raw[split] = d
    unlisted = sorted(set(arrays) - listed)
    if unlisted:
        raise _damaged(json_path, f"{st_path.name} holds arrays the JSON does not list: "
                                  f"{', '.join(unlisted[:5])}{' ...' if len(unlisted) > 5 else ''}")
    return raw


def read_raw(path: str | Path) -> dict:
    """The file's dict of splits, from the MMSA pickle (restricted) or from its converted copy."""
    path = Path(path)
    if is_converted(path):
        return _read_converted(path)
    st_path, json_path = converted_paths(path)
    if st_path.is_file() and json_path.is_file():
        log.info("a converted copy of %s exists (%s): pass --data %s to skip unpickling", path, st_path, st_path)
    return restricted_load(path)


# ----------------------------------------------------------------------------------------- validation / repair
@dataclass
class Split:
    """One split after validation: float32 ``features[m]`` (N, L_m, D_m) (non-finite values zeroed), int64
    ``lengths[m]`` (N,) in [0, L_m], float32 ``labels`` (N,), ``ids``, optional ``unimodal_labels[m]`` (N,)."""

    name: str
    features: dict[str, np.ndarray]
    lengths: dict[str, np.ndarray]
    labels: np.ndarray
    ids: list[str]
    unimodal_labels: dict[str, np.ndarray] = field(default_factory=dict)
    raw_text: list[str] | None = None

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class MMSAData:
    source: str
    splits: dict[str, Split]
    repairs: list[dict] = field(default_factory=list)

    @property
    def modalities(self) -> list[str]:
        return list(self.splits["train"].features)

    @property
    def dims(self) -> dict[str, int]:
        return {m: int(x.shape[2]) for m, x in self.splits["train"].features.items()}

    @property
    def seq_lens(self) -> dict[str, int]:
        return {m: int(x.shape[1]) for m, x in self.splits["train"].features.items()}

    def summary(self) -> dict:
        return {"source": self.source, "n": {s: sp.n for s, sp in self.splits.items()}, "dims": self.dims,
                "seq_lens": self.seq_lens, "repairs": self.repairs}


def _check_top(raw, path) -> None:
    if not isinstance(raw, dict):
        raise MMSAFormatError(f"{path}: expected a dict with 'train', 'valid' and 'test', got {type(raw).__name__}")
    missing = [s for s in SPLITS if s not in raw]
    if missing:
        raise MMSAFormatError(f"{path}: no split {', '.join(map(repr, missing))} (the file has keys "
                              f"{sorted(map(str, raw))[:10]}); an MMSA file has 'train', 'valid' and 'test'")
    for s in SPLITS:
        if not isinstance(raw[s], dict):
            raise MMSAFormatError(f"{path}: split {s!r} must be a dict of fields, got {type(raw[s]).__name__}")


def _repair(repairs: list, source: str, split: str, key: str, what: str, count: int) -> None:
    repairs.append({"split": split, "key": key, "repair": what, "count": int(count)})
    log.warning("%s: %s/%s: %s", source, split, key, what)


def _n_of(value) -> int | None:
    if isinstance(value, np.ndarray):
        return int(value.shape[0]) if value.ndim else None
    if isinstance(value, (list, tuple)):
        return len(value)
    return None


def _validate_split(raw: dict, split: str, source: str, modalities: tuple[str, ...], repairs: list) -> Split:
    where = f"{source}: split {split!r}"
    d = raw[split]
    for key in (*modalities, LABEL_KEY):
        if key not in d:
            raise MMSAFormatError(f"{where} has no {key!r} (it has {', '.join(sorted(map(str, d)))})")
    # N of every field must agree
    ns = {str(k): _n_of(v) for k, v in d.items()}
    ns = {k: v for k, v in ns.items() if v is not None}
    if len(set(ns.values())) > 1:
        listing = ", ".join(f"{k}={v}" for k, v in sorted(ns.items(), key=lambda kv: kv[0]))
        raise MMSAFormatError(f"{where}: its fields hold different numbers of samples: {listing}")
    feats: dict[str, np.ndarray] = {}
    for m in modalities:
        arr = _numeric(d[m])
        if arr is None or arr.ndim != 3:
            shape = getattr(arr if arr is not None else d[m], "shape", None)
            raise MMSAFormatError(f"{where}: {m!r} must be a numeric array (N, L, D), got "
                                  f"{type(d[m]).__name__} of shape {shape}")
        if arr.shape[0] == 0:
            raise MMSAFormatError(f"{where} is empty ({m!r} has shape {arr.shape}: no sample): training, model "
                                  "selection and the test each need samples in train, valid and test")
        if arr.shape[1] == 0 or arr.shape[2] == 0:
            raise MMSAFormatError(f"{where}: {m!r} has shape {arr.shape}: every sample needs at least one frame "
                                  "(L >= 1) of at least one value (D >= 1)")
        arr = arr.astype(np.float32, copy=arr.dtype != np.float32)
        if not arr.flags.writeable or not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr).copy()
        bad = ~np.isfinite(arr)
        if bad.any():
            n_nan, n_pos = int(np.isnan(arr).sum()), int(np.isposinf(arr).sum())
            n_neg = int(bad.sum()) - n_nan - n_pos
            detail = ", ".join(f"{c} {w}" for c, w in ((n_nan, "NaN"), (n_pos, "+inf"), (n_neg, "-inf")) if c)
            _repair(repairs, source, split, m, f"{int(bad.sum())} non-finite feature values replaced by 0 ({detail})",
                    int(bad.sum()))
            arr[bad] = 0.0
        del bad
        feats[m] = arr
    n = feats[modalities[0]].shape[0]
    labels = _numeric(d[LABEL_KEY])
    if labels is None or labels.size != n or labels.ndim > 2:
        raise MMSAFormatError(f"{where}: {LABEL_KEY!r} must be N={n} numbers, got shape "
                              f"{getattr(labels, 'shape', None)}")
    labels = labels.reshape(-1).astype(np.float32)
    if not np.isfinite(labels).all():
        bad = np.flatnonzero(~np.isfinite(labels))
        raise MMSAFormatError(f"{where}: {len(bad)} {LABEL_KEY} are not finite (rows {bad[:5].tolist()}); "
                              "every sample needs a label")
    lengths = {}
    for m in modalities:
        seq_len = feats[m].shape[1]
        key = LENGTH_KEYS.get(m)
        raw_len = None
        if m == "text" and "text_bert" in d:
            tb = _numeric(d["text_bert"])
            if tb is not None and tb.ndim == 3 and tb.shape[0] == n and tb.shape[1] == 3 and tb.shape[2] == seq_len:
                raw_len = (tb[:, 1, :] > 0).sum(axis=1)
            else:
                log.warning("%s: text_bert has shape %s, not (N, 3, %d): text lengths = the full length", where,
                            getattr(tb, "shape", None), seq_len)
        elif key is not None and key in d:
            raw_len = _numeric(d[key])
            if raw_len is None or raw_len.size != n:
                raise MMSAFormatError(f"{where}: {key!r} must be N={n} integers, got shape "
                                      f"{getattr(raw_len, 'shape', None)}")
            raw_len = raw_len.reshape(-1)
            if not np.isfinite(raw_len).all() or not np.array_equal(raw_len, np.round(raw_len)):
                raise MMSAFormatError(f"{where}: {key!r} must hold whole numbers")
            if (raw_len < 0).any():
                rows = np.flatnonzero(raw_len < 0)
                raise MMSAFormatError(f"{where}: {key!r} has {len(rows)} negative lengths (rows {rows[:5].tolist()})")
        elif key is not None:
            _repair(repairs, source, split, key, f"missing: all {n} {m} sequences taken as full length {seq_len}", n)
        if raw_len is None:
            length = np.full(n, seq_len, dtype=np.int64)
        else:
            long = raw_len > seq_len  # compared before the cast: a huge length must not wrap around in int64
            if long.any():
                _repair(repairs, source, split, key or "text_bert",
                        f"{int(long.sum())} lengths longer than the sequence ({seq_len}) clipped to it",
                        int(long.sum()))
            length = np.minimum(raw_len, seq_len).astype(np.int64)
        if (length == 0).any():
            log.info("%s: %d %s sequences have length 0 (treated as one padding frame)", where,
                     int((length == 0).sum()), m)
        lengths[m] = length
    ids = _strings(d["id"]) if "id" in d else None
    if ids is None:
        what = "not a list of strings" if "id" in d else "missing"
        _repair(repairs, source, split, "id", f"{what}: ids {split}_<row> used for the {n} samples", n)
        ids = [f"{split}_{i}" for i in range(n)]
    uni = {}
    for m, key in UNIMODAL_LABEL_KEYS.items():
        if m in modalities and key in d:
            v = _numeric(d[key])
            if v is None or v.size != n or not np.isfinite(v).all():
                _repair(repairs, source, split, key, f"not {n} finite numbers: unimodal labels dropped", n)
            else:
                uni[m] = v.reshape(-1).astype(np.float32)
    raw_text = _strings(d["raw_text"]) if "raw_text" in d else None
    return Split(split, feats, lengths, labels, ids, uni, raw_text)


def load_mmsa(path: str | Path, modalities: tuple[str, ...] | list[str] = MODALITIES) -> MMSAData:
    """Read, validate and repair an MMSA feature file (pickle or converted copy); see the module docstring."""
    path = Path(path)
    modalities = tuple(modalities)
    if not modalities or any(m not in MODALITIES for m in modalities) or len(set(modalities)) != len(modalities):
        raise MMSAFormatError(f"modalities must be distinct names from {', '.join(MODALITIES)}, got {modalities}")
    raw = read_raw(path)
    _check_top(raw, path)
    repairs: list[dict] = []
    splits = {s: _validate_split(raw, s, str(path), modalities, repairs) for s in SPLITS}
    del raw
    for m in modalities:
        dims = {s: sp.features[m].shape[2] for s, sp in splits.items()}
        if len(set(dims.values())) > 1:
            raise MMSAFormatError(f"{path}: {m!r} features have different widths per split: "
                                  + ", ".join(f"{s} {d}" for s, d in dims.items()))
    seen: dict[str, str] = {}
    overlap = 0
    for s, sp in splits.items():
        for i in set(sp.ids):
            if i in seen and seen[i] != s:
                overlap += 1
            seen.setdefault(i, s)
    if overlap:
        log.warning("%s: %d ids occur in more than one split", path, overlap)
    return MMSAData(str(path), splits, repairs)


# --------------------------------------------------------------------------------------------- synthetic file
#: MOSI's split proportions (1284 / 229 / 686 of 2199).
MOSI_FRACTIONS = (1284 / 2199, 229 / 2199, 686 / 2199)


def write_synthetic(path: str | Path, n: int = 700, seq_lens: tuple[int, int, int] = (50, 50, 50),
                    dims: tuple[int, int, int] = (768, 5, 20), dataset: str = "mosi", seed: int = 0,
                    neg_inf: int = 25, text_bert: bool = True, fractions=MOSI_FRACTIONS) -> Path:
    """Write an MMSA-layout pickle of ``n`` samples with a planted learnable signal.

    Each sample has three independent latent parts ``t, a, v ~ N(0, 1)`` and noise ``e``; its sentiment is
    ``s = (0.6 t + 0.5 a + 0.4 v + 0.4 e) / 0.964`` (unit variance) and its label ``1.5 s`` clipped to [-3, 3] on a
    0.2 grid (CH-SIMS: ``0.5 s`` in [-1, 1], with unimodal labels ``regression_labels_T/A/V`` from ``t``, ``a``,
    ``v``). The text carries ``t`` along a fixed direction in a random third of its real frames (over noise), the
    audio carries ``a`` in one dimension's level, and the vision carries ``v`` only in the *order* of its frames (a
    ramp from -v to +v over the real frames, whose mean is 0: pooling by the mean cannot see it, a sequence model
    can). No model can beat the noise ``e`` (a correlation of about 0.92 at best). Lengths vary per sample and
    modality (frames past the length are zero, as in MMSA's unaligned files); ``neg_inf`` audio entries of real
    frames are -inf, as in MOSI's audio. ``text_bert`` holds ids / mask / segments for the text lengths.
    """
    rng = np.random.default_rng(seed)
    (lt, la, lv), (dt, da, dv) = seq_lens, dims
    counts = np.floor(np.asarray(fractions) / np.sum(fractions) * n).astype(int)
    counts[0] += n - counts.sum()
    out = {}
    direction = rng.standard_normal(dt).astype(np.float32)
    direction /= np.linalg.norm(direction)
    for split, k in zip(SPLITS, counts):
        t, a, v, e = rng.standard_normal((4, k)).astype(np.float32)
        s = (0.6 * t + 0.5 * a + 0.4 * v + 0.4 * e) / 0.964
        scale, bound = (0.5, 1.0) if dataset == "sims" else (1.5, 3.0)
        labels = np.clip(np.round(scale * s * 5) / 5, -bound, bound).astype(np.float32)
        len_t = rng.integers(max(2, lt // 4), lt + 1, k)
        len_a = rng.integers(max(1, la // 5), la + 1, k)
        len_v = rng.integers(max(2, lv // 5), lv + 1, k)
        text = rng.standard_normal((k, lt, dt)).astype(np.float32) * 0.5
        audio = rng.standard_normal((k, la, da)).astype(np.float32)
        audio[:, :, 0] += 0.8 * a[:, None]
        vision = rng.standard_normal((k, lv, dv)).astype(np.float32) * 0.5
        for i in range(k):
            hit = np.flatnonzero(rng.random(len_t[i]) < 1 / 3)
            text[i, hit] += 1.0 * t[i] * direction
            vision[i, : len_v[i], 0] += 1.0 * v[i] * np.linspace(-1, 1, len_v[i], dtype=np.float32)
        text[np.arange(lt)[None, :] >= len_t[:, None]] = 0.0
        audio[np.arange(la)[None, :] >= len_a[:, None]] = 0.0
        vision[np.arange(lv)[None, :] >= len_v[:, None]] = 0.0
        if neg_inf:  # distinct entries of real frames
            real = np.flatnonzero(np.broadcast_to((np.arange(la)[None, :] < len_a[:, None])[..., None], audio.shape))
            audio.reshape(-1)[rng.choice(real, size=min(neg_inf, real.size), replace=False)] = -np.inf
        d = {"raw_text": np.array([f"synthetic utterance {split} {i}" for i in range(k)], dtype=object),
             "audio": audio, "vision": vision,
             "id": np.array([f"vid{split}{i // 4}$_${i % 4}" for i in range(k)], dtype=object),
             "text": text, "audio_lengths": len_a.astype(np.int64).tolist(),
             "vision_lengths": len_v.astype(np.int64).tolist(),
             "annotations": np.array(["Positive" if y > 0 else "Negative" if y < 0 else "Neutral" for y in labels],
                                     dtype=object),
             "classification_labels": np.sign(labels).astype(np.float32) + 1,
             "regression_labels": labels}
        if text_bert:
            tb = np.zeros((k, 3, lt), dtype=np.float32)
            mask = np.arange(lt)[None, :] < len_t[:, None]
            tb[:, 0] = np.where(mask, rng.integers(1000, 30000, (k, lt)), 0)
            tb[:, 1] = mask
            d["text_bert"] = tb
        if dataset == "sims":
            for key, part in (("regression_labels_T", t), ("regression_labels_A", a), ("regression_labels_V", v)):
                d[key] = np.clip(np.round(0.5 * part * 5) / 5, -1, 1).astype(np.float32)
        out[split] = d
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        pickle.dump(out, fh, protocol=4)
    return path
