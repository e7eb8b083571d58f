"""Command-line conventions shared by every phase script.

* :class:`ArgumentParser` accepts underscore spellings of every long flag (``--data_root`` for
  ``--data-root``), as the seed's scripts did, without cluttering ``--help``.
* :func:`add_data_args` adds the data-root / work-dir flags every phase understands.
* :func:`run_main` turns the project's expected errors (:class:`UserError`) into one clear message and
  exit status 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import errno
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
#: where local backbones (Hugging Face folders, the assembled offline weights) live
PRETRAINED_DIR = REPO_ROOT / "pretrained_models"
DEFAULT_DATA_ROOT = Path("dataset")
#: where the feature, embedding and caption caches live (relative to the working directory): $MSA_CACHE_DIR or cache/
CACHE_ROOT = Path(os.environ.get("MSA_CACHE_DIR") or "cache")
#: the feature cache (:mod:`msa.features`), the phases' default --cache-dir
FEATURE_CACHE_DIR = CACHE_ROOT / "features"

UNDERSCORE_NOTE = "Every --flag-name is also accepted as --flag_name."


class UserError(Exception):
    """A problem with the user's input or environment: reported as one message, never a traceback."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with underscore aliases for long options and defaults shown in --help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        epilog = kwargs.get("epilog")
        kwargs["epilog"] = f"{epilog}\n\n{UNDERSCORE_NOTE}" if epilog else UNDERSCORE_NOTE
        super().__init__(*args, **kwargs)

    def _known_long_options(self) -> set[str]:
        return {opt for action in self._actions for opt in action.option_strings if opt.startswith("--")}

    def parse_known_args(self, args: Sequence[str] | None = None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        known = self._known_long_options()
        fixed = []
        for arg in args:
            if arg == "--":
                fixed.extend(args[len(fixed):])
                break
            if arg.startswith("--") and "_" in arg:
                name, sep, value = arg.partition("=")
                dashed = name.replace("_", "-")
                if name not in known and dashed in known:
                    arg = dashed + sep + value
            fixed.append(arg)
        return super().parse_known_args(fixed, namespace)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help with the defaults; a help given as a function (made from a registry, :mod:`msa.config`) is called
    here, when the help is shown, so that building a parser imports no registry."""

    def _format_action(self, action):
        if callable(action.help):
            action.help = action.help()
        return super()._format_action(action)

    def _get_help_string(self, action):
        if callable(action.help):
            action.help = action.help()
        return super()._get_help_string(action)


# ------------------------------------------------------------------------------ checked flag values
def _number(kind, text: str, lo: float | None, lo_open: bool, hi: float | None, what: str):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    if lo is not None and (value <= lo if lo_open else value < lo) or hi is not None and value > hi:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def positive_int(text: str) -> int:
    """argparse ``type``: an integer >= 1 (epochs, batch sizes, workers)."""
    return _number(int, text, 1, False, None, "a positive integer (>= 1)")


def non_negative_int(text: str) -> int:
    """argparse ``type``: an integer >= 0 (patience where 0 means never, counts that may be none)."""
    return _number(int, text, 0, False, None, "an integer >= 0")


def positive_float(text: str) -> float:
    """argparse ``type``: a finite number > 0 (learning rates, time budgets)."""
    return _number(float, text, 0.0, True, None, "a number > 0")


def non_negative_float(text: str) -> float:
    """argparse ``type``: a finite number >= 0 (weight decay, margins)."""
    return _number(float, text, 0.0, False, None, "a number >= 0")


def fraction(text: str) -> float:
    """argparse ``type``: a finite number in [0, 1] (dropout, ratios)."""
    return _number(float, text, 0.0, False, 1.0, "a number between 0 and 1")


def open_fraction(text: str) -> float:
    """argparse ``type``: a finite number in (0, 1] (a share that must not be empty)."""
    return _number(float, text, 0.0, True, 1.0, "a number in (0, 1]")


def output_file(text: str) -> Path:
    """argparse ``type``: a file to write; refused when it is an existing folder."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name")
    return path


def optional_path(text: str) -> Path | None:
    """argparse ``type``: a path, or ``none`` (no path: the feature it names is off)."""
    return None if text.strip().lower() == "none" else Path(text)


def output_dir(text: str) -> Path:
    """argparse ``type``: a folder to write into; refused when it is an existing file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} exists and is not a folder")
    return path


def parse_list(text: str, allowed, flag: str) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]`` (duplicates dropped), each one of ``allowed``; else a :class:`UserError`."""
    items = list(dict.fromkeys(x.strip() for x in str(text).split(",") if x.strip()))
    unknown = [x for x in items if x not in allowed]
    if unknown or not items:
        raise UserError(f"{flag}: unknown value(s) {', '.join(unknown) or '(none given)'}; "
                        f"choose from {', '.join(allowed)}")
    return items


# ------------------------------------------------------------------------------ secrets in arguments
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<userinfo>[^/?#@\s]+)@")
_URL_SECRET_PARAM = re.compile(r"(?i)(?P<name>[?&;](?:api[_\-]?key|key|token|access[_\-]?token|auth|secret|"
                               r"password|passwd|pwd|sig|signature|x-api-key)=)[^&#;\s]+")
REDACTED = "***"


def redact(text: str) -> str:
    """``text`` with credentials inside URLs replaced by ``***``: the user-info part (``http://user:KEY@host``)
    and secret-looking query parameters (``?api_key=...``, ``&token=...``). Keys belong in $VLM_API_KEY, never
    in a URL, but one given there is still never recorded."""
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)
    return _URL_SECRET_PARAM.sub(lambda m: f"{m['name']}{REDACTED}", text)


def url_secrets(text: str) -> list[str]:
    """The credentials inside the URLs of ``text`` (user name, password, secret query values), to scrub them from
    messages that quote them without the URL around them."""
    found = []
    for m in _URL_USERINFO.finditer(text):
        found += [part for part in m["userinfo"].split(":") if part]
    for m in _URL_SECRET_PARAM.finditer(text):
        found.append(m.group(0)[len(m["name"]):])
    return found


def args_record(args) -> dict:
    """The parsed arguments as a JSON-ready dict for run records and stamps: paths as strings, and credentials in
    any string value redacted (:func:`redact`)."""
    raw = dict(vars(args)) if not isinstance(args, dict) else dict(args)
    return {k: _redacted(v) for k, v in raw.items()}


def _redacted(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redacted(v) for v in value]
    return value


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """Flags shared by every phase: where the user's data is and where derived data files go
    (:class:`msa.config.DataSettings`)."""
    from msa.config import DataSettings, add_options

    add_options(parser, DataSettings, group="data")


def work_dir(args: argparse.Namespace) -> Path:
    return Path(args.work_dir) if args.work_dir is not None else REPO_ROOT / DEFAULT_DATA_ROOT


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


#: OSErrors that mean the machine or the path, not a bug: reported by :func:`run_main` as one line
_ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                                 errno.ENAMETOOLONG, errno.ELOOP, errno.EISDIR, errno.ENOTDIR, errno.EFBIG})


def foreign_library(main: Callable) -> Path | None:
    """The checkout ``main``'s file belongs to, when that is not the checkout this ``msa`` library was imported
    from (else None). It happens with a ``.venv`` copied from another checkout: its editable install still points
    at the other one, so a phase script of this checkout would run that checkout's library and write its
    ``dataset/`` there."""
    import inspect

    try:
        path = Path(inspect.getfile(main)).resolve()
    except (TypeError, OSError):
        return None
    for parent in path.parents:
        if (parent / "msa" / "__init__.py").is_file():
            return None if parent == REPO_ROOT else parent
    return None


def run_main(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run a phase's ``main``; a :class:`UserError` becomes ``error: ...`` on stderr and exit status 2. A script
    of one checkout that imported another checkout's library (a copied ``.venv``) is refused the same way."""
    try:
        other = foreign_library(main)
        if other is not None:
            raise UserError(f"this script belongs to the checkout {other}, but its Python imports "
                            f"the msa library of {REPO_ROOT} (a .venv copied from another checkout, whose editable "
                            f"install points there, or a non-editable install); in {other} run: .venv/bin/python "
                            f"-m pip install --no-deps --no-build-isolation -e .")
        return int(main(argv) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # the environment, not the code: a full disk, a read-only folder, a name too long for the file system
        if exc.errno not in _ENVIRONMENT_ERRNOS:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}; nothing was left half-written (atomic writes), free the "
              "space or fix the path and run again", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
