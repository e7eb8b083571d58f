"""`make demo`: the whole pipeline on a small synthetic dataset, so a fresh clone shows a result without data.

    python -m msa.demo --out demo --preset quick       # what `make demo` runs
    python -m msa.demo --out /tmp/d --preset smallest  # the preset CI runs

Writes into --out (git-ignored ``demo/`` by default), never into the project's own folders:

* ``<out>/dataset/``: a synthetic dataset in the MVSA layout (:mod:`msa.synthetic`): coloured shapes and
  sentiment words that carry the label with some noise, plus one deliberately faulty post of each kind (broken
  image, empty text, GBK-encoded text, duplicate, unknown label, ...) so that phase 0's audit has something to show;
* ``<out>/pipeline/``: a copy of the project's code, in which `make run` runs every phase with the preset's
  fewer epochs, seeds and trials and the offline captioner, with its own caches (``<out>/cache``); its phase
  folders, ``predict.txt`` and ``results/REPORT.html`` are the demo's results.

The project's virtual environment is reused (--venv). A rerun refreshes the copy of the code and skips the phases
whose inputs did not change. The last line printed is the report's path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from msa import cli
from msa.stages import STAGES

REPO = cli.REPO_ROOT
#: what `make run` needs of the project, copied into <out>/pipeline
CODE = ("msa", *(stage.name for stage in STAGES), "configs")
FILES = ("Makefile", "requirements.lock", "requirements-models.txt", "pyproject.toml")
#: preset -> (labelled posts, test posts, make variables)
PRESETS = {
    "quick": (400, 40, {"SEEDS": "42,43", "TRIALS": "6",
                        "PHASE1_ARGS": "--num-epochs 12", "PHASE2_ARGS": "--num-epochs 12",
                        "SEARCH_ARGS": "--num-epochs 12", "PHASE3_ARGS": "--num-epochs 12",
                        "PHASE4_ARGS": "--num-epochs 6",
                        "FINAL_ARGS": "--seeds 42,43 --num-epochs 12"}),
    "smallest": (150, 12, {"SEEDS": "42", "TRIALS": "2",
                           "PHASE1_ARGS": "--num-epochs 3", "PHASE2_ARGS": "--num-epochs 3 --fusions concat,add",
                           "SEARCH_ARGS": "--num-epochs 3", "PHASE3_ARGS": "--num-epochs 3 --losses ce,focal",
                           "PHASE4_ARGS": "--num-epochs 2 --modes none,extra",
                           "FINAL_ARGS": "--seeds 42 --num-epochs 3"}),
}


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0] + "\n\n" + "\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--out", type=Path, default=REPO / "demo", help="the demo's folder (dataset, code copy, results)")
    p.add_argument("--preset", default="quick", choices=sorted(PRESETS),
                   help="quick: 400 posts, 2 seeds, about 3-4 minutes here; smallest: 150 posts, 1 seed (CI)")
    p.add_argument("--venv", type=Path, default=REPO / ".venv", help="the virtual environment `make setup` made")
    p.add_argument("--new-data", action="store_true", help="write the synthetic dataset again")
    return p


def write_dataset(root: Path, n_train: int, n_test: int) -> dict:
    """The synthetic dataset with its faulty posts; returns what phase 0 should report about each fault."""
    from msa.synthetic import add_faulty_samples, make_dataset

    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    make_dataset(tmp, n_train=n_train, n_test=n_test, seed=0, image_size=96)
    faults = add_faulty_samples(tmp)
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp, root)
    return faults


def copy_code(dest: Path) -> None:
    """A copy of the code `make run` runs (no results, caches or data); files keep their times, so the shared
    virtual environment's install stamp stays valid."""
    ignore = shutil.ignore_patterns("results", "figures", "ablation", "experiments", "__pycache__", "*.tmp")
    dest.mkdir(parents=True, exist_ok=True)
    for name in CODE:
        shutil.copytree(REPO / name, dest / name, ignore=ignore, dirs_exist_ok=True)
    for name in FILES:
        shutil.copy2(REPO / name, dest / name)
    # the project's model folders (e.g. the ~440 MB all-mpnet-base-v2 that `make models` assembles) are shared, not
    # copied: the copy's pretrained_models/ is a link to the project's
    link = dest / "pretrained_models"
    if not link.is_symlink():
        shutil.rmtree(link, ignore_errors=True)
        (REPO / "pretrained_models").mkdir(exist_ok=True)
        link.symlink_to(REPO / "pretrained_models", target_is_directory=True)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    venv = args.venv.resolve()
    if not (venv / "bin" / "python").is_file():
        raise cli.UserError(f"no virtual environment at {venv}: run `make setup` first (or `make demo`)")
    out = args.out.resolve()
    n_train, n_test, make_vars = PRESETS[args.preset]
    t0 = time.time()
    data = out / "dataset"
    if args.new_data or not (data / "train.txt").is_file():
        faults = write_dataset(data, n_train, n_test)
        print(f"demo: wrote a synthetic dataset of {n_train} labelled + {n_test} test posts (and {len(faults)} "
              f"deliberately faulty ones for the audit) -> {data}", flush=True)
    pipeline = out / "pipeline"
    copy_code(pipeline)
    # PYTHONPATH: the copy's scripts import the copy's msa, not the project's (which `make setup` installs)
    env = dict(os.environ, MSA_CACHE_DIR=str(out / "cache"), MPLBACKEND="Agg", PYTHONPATH=str(pipeline))
    cmd = ["make", "--no-print-directory", "-C", str(pipeline), "run", f"DATA={data}", f"VENV={venv}",
           *(f"{k}={v}" for k, v in make_vars.items())]
    print(f"demo: running the pipeline ({args.preset} preset) in {pipeline}", flush=True)
    rc = subprocess.call(cmd, env=env)
    if rc:
        raise cli.UserError(f"the demo pipeline stopped (exit {rc}); the step's message is above")
    report = pipeline / "results" / "REPORT.html"
    print(f"demo: done in {time.time() - t0:.0f} s; predictions {pipeline / 'predict.txt'}")
    print(f"demo: open the report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
