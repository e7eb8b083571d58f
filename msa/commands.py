"""The ``msa`` command (installed by ``make setup``): every stage and front end by name, e.g.

    msa phase1 --data-root DATA --seeds 42       # = python phase1/main.py --data-root DATA --seeds 42
    msa predict --image photo.jpg --text "..."    # = python phase4/predict_test.py ... (also: msa-predict)
    msa --list                                    # the commands, in pipeline order, with their scripts

The scripts stay the front ends (users run them by path too); this only finds the one a name stands for
(:func:`msa.stages.commands`) and runs it as ``python SCRIPT`` would, with the same flags and exit status.
"""

from __future__ import annotations

import runpy
import sys
from collections.abc import Sequence

from msa.cli import REPO_ROOT
from msa.stages import commands


def _usage() -> str:
    table = {**commands(), "report": "python -m msa.report", "demo": "python -m msa.demo"}
    rows = "\n".join(f"  {name:<16} {script}" for name, script in table.items())
    return f"usage: msa COMMAND [flags]   (msa COMMAND --help for its flags)\n\ncommands:\n{rows}\n"


def run(name: str, argv: Sequence[str]) -> int:
    """Run the script (or library module) of command ``name`` with ``argv`` as its command line; its exit status."""
    if name in ("report", "demo"):  # library modules: their main, as `python -m msa.<name>` runs it
        import importlib

        from msa.cli import run_main

        target = f"msa.{name}"
        runner = lambda: sys.exit(run_main(importlib.import_module(target).main, list(argv)))  # noqa: E731
    else:
        script = commands().get(name)
        if script is None:
            print(f"error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
            return 2
        target = str(REPO_ROOT / script)
        runner = lambda: runpy.run_path(target, run_name="__main__")  # noqa: E731
    saved = sys.argv
    sys.argv = [target, *argv]
    try:
        runner()
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        sys.argv = saved
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "--list"):
        print(_usage())
        return 0 if argv else 2
    return run(argv[0], argv[1:])


def predict(argv: Sequence[str] | None = None) -> int:
    """``msa-predict``: phase4/predict_test.py."""
    return run("predict", list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
