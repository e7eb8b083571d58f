"""Command-line conventions shared by every phase script.

* :class:`ArgumentParser` accepts underscore spellings of every long flag (``--data_root`` for
  ``--data-root``), as the seed's scripts did, without cluttering ``--help``.
* :func:`add_data_args` adds the data-root / work-dir flags every phase understands.
* :func:`run_main` turns the project's expected errors (:class:`UserError`) into one clear message and
  exit status 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_ROOT = Path("dataset")
#: where the feature, embedding and caption caches live (relative to the working directory): $MSA_CACHE_DIR or cache/
CACHE_ROOT = Path(os.environ.get("MSA_CACHE_DIR") or "cache")

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
    pass


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """Flags shared by every phase: where the user's data is and where derived data files go."""
    g = parser.add_argument_group("data")
    g.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT,
                   help="dataset root holding data/{guid}.jpg|.txt, train.txt and test_without_label.txt "
                        "(never modified)")
    g.add_argument("--work-dir", type=Path, default=None,
                   help="where phase 0 writes train_cleaned.txt, data_audit.csv, data_inventory.csv and "
                        "splits/, and where later phases read them (default: the project's dataset/ folder, "
                        "even when --data-root points elsewhere)")
    g.add_argument("--split", default="default",
                   help="name of the persisted split in <work-dir>/splits/<name>.csv "
                        "(phase 0 writes 'default' and, with --folds K, 'cv{K}-0' ... 'cv{K}-{K-1}')")


def work_dir(args: argparse.Namespace) -> Path:
    return Path(args.work_dir) if args.work_dir is not None else REPO_ROOT / DEFAULT_DATA_ROOT


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def run_main(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run a phase's ``main``; a :class:`UserError` becomes ``error: ...`` on stderr and exit status 2."""
    try:
        return int(main(argv) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
