"""Phase 0b: analyses what phase 0a wrote in dataset/ (label balance, text lengths, encodings, image sizes,
duplicates, audit) and writes phase0/figures/*.png and phase0/results/data_summary.md.

Run from the repository root after phase0/data_cleaner.py:

    python phase0/data_analysis.py --data-root dataset/

Reads  <work-dir>/data_inventory.csv, data_audit.csv, train_cleaned.txt, splits/<split>.csv,
       phase0_manifest.json (all written by data_cleaner.py)
Writes phase0/figures/*.png and phase0/results/data_summary.md + summary.json
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from msa import cli, data_summary, stamp
from msa.config import add_output_dirs
from msa.io import write_json, write_text
from msa.splits import load_split, split_path

log = logging.getLogger("phase0.analysis")
PHASE_DIR = Path(__file__).resolve().parent


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0] + "\n\n" + "\n\n".join(__doc__.split("\n\n")[1:]))
    cli.add_data_args(p)
    add_output_dirs(p, PHASE_DIR, "where data_summary.md and summary.json go", "where the PNG figures go",
                    order=("figures_dir", "results_dir"))
    stamp.add_force_arg(p)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)
    work_dir = cli.work_dir(args)
    stamp_path = args.results_dir / "inputs.json"
    inputs = stamp.inputs_of(args, files=[work_dir / "phase0_manifest.json", split_path(work_dir, args.split)],
                             code=[Path(__file__)])
    if stamp.check(stamp_path, inputs, args.force, "phase 0 analysis"):
        print(f"phase 0 analysis: up to date ({args.results_dir}); --force recomputes")
        return 0
    d = data_summary.load_phase0(work_dir)
    given = Path(args.data_root).resolve()
    if d["manifest"]["data_root"] != str(given):
        log.warning("%s was made from %s, not --data-root %s", work_dir, d["manifest"]["data_root"], given)
    split = load_split(work_dir, args.split)
    s = data_summary.analyse(d, split.frame)
    args.figures_dir.mkdir(parents=True, exist_ok=True)
    figures = data_summary.figures(s, d, args.figures_dir)
    write_json(args.results_dir / "summary.json", {"split": args.split, "split_sha256": split.sha256, **s})
    md = write_text(args.results_dir / "data_summary.md",
                    data_summary.markdown(s, d["manifest"], args.split, figures, args.results_dir))
    stamp.write(stamp_path, inputs, [args.results_dir / "summary.json", md, *figures])
    print(f"phase 0 analysis: {len(figures)} figures in {args.figures_dir}, summary in {md}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
