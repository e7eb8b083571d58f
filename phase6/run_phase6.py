"""Phase 6: linear probes (and zero-shot prompts) on frozen CLIP image, text and image+text embeddings,
compared with the phase-4 model on phase 0's validation split; reads the cleaned index, the split, a local CLIP
folder and the reference model's metrics.json, writes phase6/results/summary.{csv,md,json},
val_predictions.csv and phase6/figures/comparison.png.

Run from the repository root after phase 0 (and, for the reference row, phase 4, 3 or 1):

    python phase6/run_phase6.py --data-root dataset/
    python phase6/run_phase6.py --data-root ../shared/mvsa --clip-model pretrained_models/clip-vit-large-patch14-336

CLIP (--clip-model, any local Hugging Face CLIP-like folder) is frozen and loaded with local_files_only, never
with remote code. Its projected image_embeds and text_embeds are L2-normalised and cached under
<cache-dir>/clip-{image,text}-<key>/ (the key covers the folder's weights sha256 and preprocessing, so a rerun
computes nothing). Texts are the same normalised texts every phase uses, truncated at 77 CLIP tokens.

Probes: multinomial logistic regression on the image, the text and the image+text embeddings (the
concatenation of the two normalised embeddings), standardised with training statistics; C is chosen from
--c-grid by stratified --cv-folds cross-validation on the training split alone (folds shuffled with --seed,
scored by --cv-metric), refit on the whole training split and evaluated once on the validation split, the same
one every phase uses. Zero-shot rows: softmax of CLIP's logit scale x cosine similarity to the prompt-ensemble
class embeddings ("a {negative|neutral|positive} photo.", ... averaged), for the image, the text and both
(mean similarity). No training data is used by them.

Without the CLIP folder the phase warns, naming the missing folder and how to get it, and runs the same probes
on the frozen default backbones' cached features (MiniLM + EfficientNet-Lite0): those rows are labelled as
such, never as CLIP, and there are no zero-shot rows. It still exits 0.

Reference row (--reference auto): phase4/results/best/metrics.json, else phase3/..., else phase1/... (the
row names where it came from), plus the mean ± std over seeds of the best method when <phase>/results/best.json
records it. A reference measured on another split is flagged in the table.

Reads  <work-dir>/train_cleaned.txt, splits/<split>.csv (phase 0), <data-root>/data/, --clip-model, the feature
       cache, the reference's metrics.json (+ config.json, best.json)
Writes <results-dir>/summary.csv, summary.md, summary.json (every row's metrics, chosen C and CV scores per C,
       embedding cache statistics, the reference), val_predictions.csv (row, guid, label, pred, probabilities);
       <figures-dir>/comparison.png (weighted F1, neutral F1 and accuracy per row)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from msa import cli, stamp
from msa.config import add_output_dirs

PHASE_DIR = Path(__file__).resolve().parent


def build_parser() -> cli.ArgumentParser:
    from msa.clip import DEFAULT_CLIP
    from msa.probes import CV_METRICS, DEFAULT_CS
    from msa.settings import DEVICES

    p = cli.ArgumentParser(description=__doc__)
    cli.add_data_args(p)
    g = p.add_argument_group("CLIP")
    g.add_argument("--clip-model", type=Path, default=DEFAULT_CLIP,
                   help="local Hugging Face CLIP-like folder (config.json, weights, tokenizer, "
                        "preprocessor_config.json); a bare name is also looked up in pretrained_models/. Missing: "
                        "a warning, and the probes run on the default backbones instead (not CLIP)")
    g.add_argument("--device", default="auto", choices=list(DEVICES),
                   help="where CLIP runs (auto: cuda when available)")
    g.add_argument("--batch-size", type=cli.positive_int, default=32, help="batch size of the frozen encoders")
    pr = p.add_argument_group("probes")
    pr.add_argument("--probe", default="logreg", choices=["logreg"],
                    help="probe type: multinomial logistic regression (sklearn, lbfgs)")
    pr.add_argument("--cv-folds", type=cli.positive_int, default=5,
                    help="stratified folds of the training split that choose C (the validation split is never used)")
    pr.add_argument("--c-grid", default=",".join(f"{c:g}" for c in DEFAULT_CS),
                    help="comma-separated values of C (inverse regularisation strength) to choose from")
    pr.add_argument("--cv-metric", default="weighted_f1", choices=CV_METRICS,
                    help="cross-validation score that chooses C (ties: the smaller C)")
    pr.add_argument("--class-weight", default="none", choices=["none", "balanced"],
                    help="logistic-regression class weights: none, or inversely proportional to class frequency")
    pr.add_argument("--no-standardize", action="store_true",
                    help="fit on the normalised embeddings as they are (default: standardise each dimension with "
                         "the training rows' mean and std)")
    pr.add_argument("--seed", type=int, default=42, help="seed of the cross-validation folds")
    o = p.add_argument_group("reference and output")
    o.add_argument("--reference", default="auto",
                   help="reference model row: 'auto' (phase4/results/best/metrics.json, else phase3's, else "
                        "phase1's), 'none', or a run folder / metrics.json path")
    o.add_argument("--cache-dir", type=Path, default=cli.CACHE_ROOT / "features",
                   help="feature and embedding cache folder")
    add_output_dirs(o, PHASE_DIR, "where the tables go", "where the figure goes")
    o.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    stamp.add_force_arg(o)
    return p


def main(argv=None) -> int:
    from msa import probe_stage as stage
    from msa.clip import resolve_folder

    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)
    t0 = time.time()
    cs = stage.parse_grid(args.c_grid)
    data_dir = Path(args.data_root) / "data"
    if not data_dir.is_dir():
        raise cli.UserError(f"{data_dir} not found: --data-root must hold data/{{guid}}.jpg|.txt")
    clip_folder, _ = resolve_folder(args.clip_model)
    stamp_path = args.results_dir / "inputs.json"
    inputs = stamp.inputs_of(args, files=stamp.phase0_files(cli.work_dir(args), args.split)
                             + stage.reference_files(args.reference), code=[PHASE_DIR],
                             extra={"clip_folder": str(clip_folder), "clip_listing": stamp.listing_digest(clip_folder)},
                             ignore=("batch_size", "device"))
    if stamp.check(stamp_path, inputs, args.force, "phase 6"):
        print(f"phase 6: up to date ({args.results_dir}); --force recomputes")
        return 0
    # torch, pandas and the data after the check (arguments that match a finished run's were valid)
    import pandas as pd

    from msa.experiment import load_labelled
    from msa.io import write_csv, write_json, write_text
    from msa.probes import check_folds

    data = load_labelled(cli.work_dir(args), args.split)
    check_folds(data.labels[data.train_idx], args.cv_folds)
    device = stage.resolve_device(args.device)
    ref_rows, notes = stage.find_reference(args.reference, data.split)  # a bad --reference fails before any work
    emb = stage.embeddings(args, data, data_dir, device)
    probe_kw = stage.probe_settings(args, cs)
    rows, preds = stage.probe_rows(emb, data, probe_kw)
    rows += ref_rows
    seconds = time.time() - t0

    write_csv(args.results_dir / "summary.csv", stage.summary_table(rows))
    write_csv(args.results_dir / "val_predictions.csv", pd.concat(preds, ignore_index=True))
    header, title = stage.titles(emb, ref_rows, data)
    notes = [stage.best_note(rows, ref_rows)] + notes
    md = stage.markdown(rows, header, stage.intro(emb, args, cs, len(data.train_idx)), notes)
    write_text(args.results_dir / "summary.md", md)
    write_json(args.results_dir / "summary.json", stage.summary_json(emb, data, args, probe_kw, rows, notes, seconds))
    stage.comparison_figure(rows, args.figures_dir / "comparison.png", title)

    stamp.write(stamp_path, inputs, outputs=[args.results_dir / n for n in ("summary.csv", "summary.md",
                                                                          "summary.json", "val_predictions.csv")]
                + [args.figures_dir / "comparison.png"])
    print(md)
    print(f"tables -> {args.results_dir}, figure -> {args.figures_dir / 'comparison.png'} ({seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
