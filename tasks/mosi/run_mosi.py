"""Seed 004: text + audio + vision sentiment regression on MMSA feature files (CMU-MOSI, CMU-MOSEI, CH-SIMS), with
the MMSA toolkit's metric set, per-modality sequence encoders + a fusion, and CMCBEP.

Run from the repository root (the feature file is yours: the project does not ship it; the MMSA toolkit,
github.com/thuiar/MMSA, links its processed files under "Processed Datasets"):

    python tasks/mosi/run_mosi.py --data MOSI/Processed/unaligned_50.pkl --dataset mosi
    python tasks/mosi/run_mosi.py --data unaligned_50.pkl --convert     # writes unaligned_50.safetensors + .json
    python tasks/mosi/run_mosi.py --data unaligned_50.safetensors --dataset mosi \\
        --model mean,lstm,transformer,cmcbep --seeds 42,43,44 --out tasks/mosi/results/mosi
    python tasks/mosi/run_mosi.py --data SIMS/Processed/unaligned_39.pkl --dataset sims --model cmcbep \\
        --lead auto --cl-weight 0.1 --unimodal-labels
    python tasks/mosi/run_mosi.py --make-synthetic /tmp/mosi_demo.pkl   # a 700-sample MOSI-sized demo file

Reading. The pickle is unpickled by a restricted loader that admits numpy arrays, dtypes and plain containers
only; any other object is refused with an error naming the file, and nothing from it runs. --convert writes a
safetensors + JSON copy that later runs load with --data X.safetensors (no unpickling at all). Missing keys, sample
counts that differ between fields, an empty train / valid / test split, bad lengths, non-finite labels and a damaged
or edited converted copy are one-line errors, before any training; NaN/+-inf features are replaced by 0 and lengths
longer than the sequence clipped (both counted, logged, and listed in config.json).

Models (--model, comma-separated, each NAME or NAME+FUSION): mean, lstm, transformer = that sequence encoder per
modality -> a fusion of msa.fusions (--fusion) -> a regression head; cmcbep = seed 004's lead-modality
supplementation + cross-modal InfoNCE + balanced prediction (msa.seq_models.CMCBEP; an implementation of the
described idea, not a reproduction of the paper's numbers). Features are standardised per dimension with training
statistics. L1 loss by default (--loss mse). The best epoch is chosen on `valid` (lowest validation loss: MAE
with L1), with early stopping; `test` is evaluated once, at the end.

Metrics (MMSA's definitions and names, as fractions): mosi/mosei: MAE, Corr, Has0_acc_2, Has0_F1_score
(negative vs non-negative), Non0_acc_2, Non0_F1_score (zero labels excluded), Mult_acc_5, Mult_acc_7 (clip to
+-2 / +-3, round); sims: Mult_acc_2, Mult_acc_3, Mult_acc_5 (clip to [-1, 1], fixed intervals), F1_score, MAE, Corr.

Writes OUT (--out, default tasks/mosi/results/<dataset>):
    metrics.json          {"valid": {...}, "test": {...}} of the first --model (mean over seeds), "std", and every
                          model's {"valid"/"test": {metric: {mean, std, per_seed}}}
    test_predictions.csv  id,label,pred of the first --model (pred = mean over seeds)
    table.csv, table.md   models x metrics on test (and valid in the .md): mean and std over seeds, seconds per run
    runs.csv              one line per model x seed: best epoch, epochs run, seconds, valid and test metrics
    figures/pred_vs_label.png   predicted vs label on test, one panel per model
    runs/<model>-s<seed>/ config.json, history.csv, metrics.json, valid_predictions.csv, test_predictions.csv,
                          checkpoint/ (model.safetensors + config.json)
    config.json, inputs.json   resolved arguments and data summary; the record that makes a rerun with the same
                          inputs a no-op (--force recomputes)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from msa import cli, stamp
from tasks.mosi import stage


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0] + "\n\n" + "\n\n".join(__doc__.split("\n\n")[1:]))
    stage.add_args(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)
    done = stage.utility(args)  # --make-synthetic / --convert
    if done is not None:
        print(done)
        return 0
    mods, specs, seeds = stage.check_args(args)
    out = args.out if args.out is not None else stage.TASK_DIR / "results" / args.dataset
    stamp_path = out / "inputs.json"
    inputs = stamp.inputs_of(args, files=stage.data_files(args), code=[Path(__file__), Path(stage.__file__)])
    if stamp.check(stamp_path, inputs, args.force, "tasks/mosi"):
        print(f"tasks/mosi: up to date ({out}); --force recomputes")
        return 0
    device = stage.setup_torch(args.threads, args.device)
    t0 = time.time()
    data, stats, tensors = stage.load(args, mods)
    runs = stage.run_grid(specs, seeds, data, tensors, stats, args, mods, device, out)
    md, fig = stage.write_outputs(runs, specs, seeds, data, args, mods, device, out)
    stamp.write(stamp_path, inputs, [md, out / "metrics.json", out / "test_predictions.csv", fig])
    print(f"{len(specs)} model(s) x {len(seeds)} seed(s) in {time.time() - t0:.0f} s -> {md}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
