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

TASK_DIR = Path(__file__).resolve().parent
DATASETS = ("mosi", "mosei", "sims")
#: the default --model: the best simple model on our measurements (see docs/mosi.md)
DEFAULT_MODEL = "transformer"
#: the widest --hidden accepted (the weights grow with its square; wider is a typo, not a model)
MAX_HIDDEN = 4096
#: the largest seed torch, numpy and random all accept alike
MAX_SEED = 2**32 - 1
#: the largest --make-synthetic file (about 160 KB a sample: 50 x 768 text frames; CMU-MOSEI has 23k samples)
MAX_SYNTHETIC = 50_000


def build_parser() -> cli.ArgumentParser:
    from msa.seq_models import ENCODERS, LOSSES, MODELS, POOLED_FUSIONS

    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0] + "\n\n" + "\n\n".join(__doc__.split("\n\n")[1:]))
    d = p.add_argument_group("data")
    d.add_argument("--data", type=Path, default=None,
                   help="MMSA feature file: the toolkit's pickle (e.g. MOSI/Processed/unaligned_50.pkl), or the "
                        "X.safetensors (+ X.json) copy written by --convert (never modified)")
    d.add_argument("--dataset", choices=DATASETS, default="mosi",
                   help="which metric set: mosi / mosei (labels in [-3, 3]) or sims (CH-SIMS, labels in [-1, 1])")
    d.add_argument("--modalities", default="text,audio,vision",
                   help="comma-separated modalities to use, from text, audio, vision (cmcbep needs two or more)")
    d.add_argument("--convert", action="store_true",
                   help="write a safetensors + JSON copy of the --data pickle (next to it, or --convert-out) and exit; "
                        "later runs load it with --data X.safetensors without unpickling")
    d.add_argument("--convert-out", type=cli.output_file, default=None,
                   help="path stem of the converted copy (default: the pickle's path without .pkl)")
    d.add_argument("--make-synthetic", type=cli.output_file, default=None, metavar="FILE",
                   help="write a synthetic MMSA-layout pickle (planted learnable signal, -inf audio entries, variable "
                        "lengths; text 50x768, audio 50x5, vision 50x20 like MOSI) to FILE and exit")
    d.add_argument("--synthetic-samples", type=cli.positive_int, default=700,
                   help=f"samples in the --make-synthetic file (10 to {MAX_SYNTHETIC})")
    d.add_argument("--synthetic-seed", type=cli.non_negative_int, default=0,
                   help="random seed of the --make-synthetic file")
    m = p.add_argument_group("model")
    m.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"comma-separated models, each NAME or NAME+FUSION; NAME from {', '.join(MODELS)} "
                        f"(mean/lstm/transformer = that encoder per modality: {', '.join(ENCODERS)}); the first "
                        "one's results fill OUT/metrics.json and OUT/test_predictions.csv")
    m.add_argument("--fusion", default="concat", choices=POOLED_FUSIONS,
                   help="fusion of the encoded modalities (msa.fusions) for models given without +FUSION")
    m.add_argument("--hidden", type=cli.positive_int, default=64,
                   help=f"width of the encoders, projections and heads (at most {MAX_HIDDEN})")
    m.add_argument("--dropout", type=cli.fraction, default=0.1,
                   help="dropout in encoders, projections and heads (0 <= p < 1)")
    m.add_argument("--max-frames", type=cli.non_negative_int, default=100,
                   help="a modality whose sequences are longer (the unaligned files' audio and vision: 375-500 "
                        "frames) has its frames averaged in windows of ceil(L / max-frames), so at most this many "
                        "remain; attention cost grows with the square of the length (0 = keep every frame)")
    c = p.add_argument_group("cmcbep")
    c.add_argument("--cmcbep-encoder", default="transformer", choices=list(ENCODERS),
                   help="sequence encoder of cmcbep (its cross-attention needs the frame sequences)")
    c.add_argument("--lead", default="auto",
                   help="lead modality that supplements the others through cross-attention: text, audio, vision, or "
                        "auto (a learned per-sample softmax over the modalities)")
    c.add_argument("--cl-weight", type=cli.non_negative_float, default=0.1,
                   help="weight of the cross-modal InfoNCE loss (0 = off)")
    c.add_argument("--cl-temperature", type=cli.positive_float, default=0.1, help="InfoNCE temperature (> 0)")
    c.add_argument("--aux-weight", type=cli.non_negative_float, default=0.5,
                   help="weight of the losses of the unimodal and fused predictions that the balanced prediction "
                        "combines (0 = only the combined prediction is trained)")
    c.add_argument("--unimodal-labels", action="store_true",
                   help="train cmcbep's unimodal predictions on regression_labels_T/A/V where the file has them "
                        "(CH-SIMS), else on the multimodal label")
    t = p.add_argument_group("training")
    t.add_argument("--loss", choices=list(LOSSES), default="l1",
                   help="regression loss (L1 = MAE, what most of MMSA's regression trainers use)")
    t.add_argument("--epochs", type=cli.positive_int, default=30, help="maximum epochs per run")
    t.add_argument("--patience", type=cli.non_negative_int, default=8,
                   help="stop after this many epochs without a lower validation loss (0 = never)")
    t.add_argument("--batch-size", type=cli.positive_int, default=32, help="samples per step")
    t.add_argument("--learning-rate", type=cli.positive_float, default=1e-3,
                   help="AdamW learning rate (warm-up + cosine)")
    t.add_argument("--weight-decay", type=cli.non_negative_float, default=0.01, help="AdamW weight decay")
    t.add_argument("--warmup-ratio", type=cli.fraction, default=0.1, help="share of steps with linear warm-up")
    t.add_argument("--seeds", default="42,43,44",
                   help="comma-separated seeds (integers 0 .. 2^32-1); every model is trained once per seed")
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where to train (auto: cuda when available)")
    t.add_argument("--threads", type=cli.non_negative_int, default=1,
                   help="torch CPU threads (the models are small: one thread is fastest on a shared or small CPU; "
                        "0 = torch's default)")
    o = p.add_argument_group("output")
    o.add_argument("--out", type=cli.output_dir, default=None,
                   help="output folder (default tasks/mosi/results/<dataset>)")
    stamp.add_force_arg(o)
    o.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _check_args(args) -> tuple[list[str], list[str], list[int]]:
    from msa.fusions import ConfigError
    from msa.mmsa import MODALITIES
    from msa.seq_models import parse_model_spec
    from msa.settings import parse_seeds

    mods = [s.strip() for s in args.modalities.split(",") if s.strip()]
    bad = [s for s in mods if s not in MODALITIES]
    if bad or not mods or len(set(mods)) != len(mods):
        raise cli.UserError(f"--modalities must be distinct names from {', '.join(MODALITIES)}, "
                            f"got {args.modalities!r}")
    specs = [s.strip() for s in args.model.split(",") if s.strip()]
    if not specs:
        raise cli.UserError("--model is empty")
    if len(set(specs)) != len(specs):
        raise cli.UserError(f"--model lists a model twice: {args.model!r}")
    for s in specs:
        parse_model_spec(s)  # ConfigError (a UserError) for unknown names
        if s.startswith("cmcbep") and len(mods) < 2:
            raise ConfigError(f"cmcbep needs at least two modalities, got --modalities {args.modalities}")
    if args.lead != "auto" and args.lead not in mods:
        raise cli.UserError(f"--lead must be auto or one of the modalities {', '.join(mods)}, got {args.lead!r}")
    if args.hidden > MAX_HIDDEN:
        raise cli.UserError(f"--hidden {args.hidden} is wider than {MAX_HIDDEN}")
    if not args.dropout < 1:
        raise cli.UserError(f"--dropout must be in [0, 1), got {args.dropout}")
    seeds = parse_seeds(args.seeds)
    bad = [s for s in seeds if not 0 <= s <= MAX_SEED]
    if bad:
        raise cli.UserError(f"--seeds must be integers from 0 to {MAX_SEED}, got {bad[0]}")
    return mods, specs, seeds


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)
    from msa import mmsa

    if args.make_synthetic is not None:
        if not 10 <= args.synthetic_samples <= MAX_SYNTHETIC:
            raise cli.UserError(f"--synthetic-samples must be 10 to {MAX_SYNTHETIC}, got {args.synthetic_samples}")
        path = mmsa.write_synthetic(args.make_synthetic, n=args.synthetic_samples, seed=args.synthetic_seed,
                                    dataset="sims" if args.dataset == "sims" else "mosi")
        print(f"synthetic MMSA file ({args.synthetic_samples} samples) -> {path}")
        return 0
    if args.data is None:
        raise cli.UserError("--data FILE is required (an MMSA feature file, or its --convert copy)")
    if args.convert:
        st, js = mmsa.convert(args.data, args.convert_out)
        print(f"converted {args.data} -> {st} + {js}; later runs: --data {st}")
        return 0
    mods, specs, seeds = _check_args(args)
    out = args.out if args.out is not None else TASK_DIR / "results" / args.dataset
    data_files = [args.data] + ([mmsa.converted_paths(args.data)[1]] if mmsa.is_converted(args.data) else [])
    stamp_path = out / "inputs.json"
    inputs = stamp.inputs_of(args, files=data_files, code=[Path(__file__), Path(stage.__file__)])
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
