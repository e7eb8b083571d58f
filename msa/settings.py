"""Model and training settings shared by the training phases: flags, presets, resolution order.

Resolution: built-in defaults < a base (e.g. phase 2's ``best_config.json``) < ``--preset FILE`` < explicit flags.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from msa import cli

log = logging.getLogger(__name__)

DEFAULTS = {
    "text_backbone": "minilm", "text_pooling": None, "image_backbone": "efficientnet_lite0",
    "feature_fusion": "concat", "loss_type": "ce", "learning_rate": 1e-4, "weight_decay": 0.01, "dropout": 0.3,
    "num_epochs": 30, "batch_size": 64, "hidden": 256, "warmup_ratio": 0.1, "scheduler": "cosine", "patience": 6,
    "sampler": "none", "side_features": "",
}
#: keys that describe the model and its training (what best_config.json carries between phases)
HYPERPARAMETERS = ("feature_fusion", "learning_rate", "weight_decay", "dropout", "num_epochs", "batch_size",
                   "hidden", "warmup_ratio", "scheduler", "patience", "side_features")
#: old spellings a preset may still use (with a warning): one spelling per setting
_ALIASES = {"fusion": "feature_fusion", "loss": "loss_type"}
#: keys of a preset file that describe it rather than set anything
PRESET_METADATA = ("name", "description")


def add_model_args(p, fusion: bool = True, loss: bool = True) -> None:
    from msa.fusions import FUSIONS
    from msa.losses import LOSSES

    m = p.add_argument_group("model")
    m.add_argument("--preset", default=None,
                   help="JSON file of settings (e.g. configs/seed_bert_swinv2.json); explicit flags still win")
    m.add_argument("--text-backbone", default=None,
                   help="text backbone: registry name or local Hugging Face folder "
                        f"(default {DEFAULTS['text_backbone']})")
    m.add_argument("--text-pooling", default=None, choices=["mean", "cls", "pooler"],
                   help="sentence vector of the text backbone (default: the backbone's own, mean for minilm)")
    m.add_argument("--image-backbone", default=None,
                   help="image backbone: registry name or local Hugging Face folder "
                        f"(default {DEFAULTS['image_backbone']})")
    if fusion:
        m.add_argument("--feature-fusion", default=None, choices=sorted(FUSIONS),
                       help=f"fusion of the modality features (default {DEFAULTS['feature_fusion']})")
    if loss:
        m.add_argument("--loss-type", default=None, choices=sorted(LOSSES), help="training loss (default ce)")
    from msa.side import HELP as SIDE_HELP

    m.add_argument("--side-features", default=None, metavar="LIST",
                   help=SIDE_HELP + " (imputed, flagged and standardised with training-split statistics saved in the "
                        "checkpoint; default: none, or what phase 2's best_config.json chose)")
    m.add_argument("--hidden", type=cli.positive_int, default=None,
                   help=f"projection width per modality (default {DEFAULTS['hidden']})")
    m.add_argument("--dropout", type=cli.fraction, default=None,
                   help=f"dropout in projections and head (default {DEFAULTS['dropout']})")


def add_training_args(p, seeds: str = "42", resume: bool = True) -> None:
    t = p.add_argument_group("training")
    t.add_argument("--learning-rate", type=cli.positive_float, default=None,
                   help=f"AdamW learning rate (default {DEFAULTS['learning_rate']})")
    t.add_argument("--weight-decay", type=cli.non_negative_float, default=None,
                   help=f"AdamW weight decay (default {DEFAULTS['weight_decay']})")
    t.add_argument("--num-epochs", type=cli.positive_int, default=None,
                   help=f"maximum epochs (default {DEFAULTS['num_epochs']})")
    t.add_argument("--batch-size", type=cli.positive_int, default=None,
                   help=f"batch size (default {DEFAULTS['batch_size']})")
    t.add_argument("--warmup-ratio", type=cli.fraction, default=None,
                   help=f"share of steps with linear warm-up (default {DEFAULTS['warmup_ratio']})")
    t.add_argument("--scheduler", default=None, choices=["cosine", "linear", "constant"],
                   help="learning-rate schedule after warm-up (default cosine)")
    t.add_argument("--patience", type=cli.non_negative_int, default=None,
                   help="stop after this many epochs without a better validation weighted F1 "
                        f"(default {DEFAULTS['patience']}; 0 = never)")
    t.add_argument("--seeds", default=seeds, help="comma-separated seeds; one run per seed")
    t.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"], help="Accelerate mixed precision")
    if resume:
        add_resume_arg(t)


def add_resume_arg(group) -> None:
    group.add_argument("--resume", action="store_true",
                       help="continue training runs that were interrupted from their last epoch state "
                            "(resume_state.pt in the run folder: model, optimiser, scheduler, RNG and early-stopping "
                            "state) instead of starting them over; the result is the same as an uninterrupted run")


def read_json_file(path: str | Path, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise cli.UserError(f"{what} {path} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise cli.UserError(f"{what} {path} is not valid JSON: {exc}") from None


def resolve(args, base: dict | None = None) -> dict:
    """Defaults < ``base`` < ``--preset`` < explicit flags."""
    settings = dict(DEFAULTS)
    layers = [base or {}]
    if getattr(args, "preset", None):
        layers.append(read_json_file(args.preset, "preset"))
    sources = ["the settings it starts from"] + ([f"preset {args.preset}"] if getattr(args, "preset", None) else [])
    for i, (layer, source) in enumerate(zip(layers, sources)):
        if not isinstance(layer, dict):
            raise cli.UserError(f"{source}: expected a JSON object of settings, got {type(layer).__name__}")
        for k, v in layer.items():
            if k in _ALIASES:
                log.warning("%s: %r is an old spelling of %r (accepted for now; please rename it)", source, k,
                            _ALIASES[k])
                k = _ALIASES[k]
            if k in settings:
                settings[k] = check_value(k, v, source)
            elif i > 0 and k not in PRESET_METADATA:  # a preset's typo must not be dropped silently
                raise cli.UserError(f"{source}: unknown setting {k!r}; the settings are "
                                    f"{', '.join(sorted(settings))} (and {', '.join(PRESET_METADATA)})")
    for k in settings:
        if getattr(args, k, None) is not None:
            settings[k] = getattr(args, k)
    return settings


#: the range of each numeric setting (the same checks as its flag)
_VALUE_CHECKS = {"learning_rate": cli.positive_float, "weight_decay": cli.non_negative_float,
                 "dropout": cli.fraction, "num_epochs": cli.positive_int, "batch_size": cli.positive_int,
                 "hidden": cli.positive_int, "warmup_ratio": cli.fraction, "patience": cli.non_negative_int}


def check_value(key: str, value, source: str):
    """``value`` of setting ``key`` from a preset or a base file, checked as its flag would be."""
    check = _VALUE_CHECKS.get(key)
    if check is None or value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise cli.UserError(f"{source}: {key} must be a number, got {value!r}")
    try:
        return check(str(int(value)) if check in (cli.positive_int, cli.non_negative_int)
                     and isinstance(value, float) and value.is_integer() else str(value))
    except argparse.ArgumentTypeError as exc:
        raise cli.UserError(f"{source}: {key} {exc}") from None


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise cli.UserError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise cli.UserError("--seeds is empty")
    return seeds


def train_config(settings: dict, seed: int, mixed_precision: str = "no"):
    from msa.trainer import TrainConfig

    return TrainConfig(learning_rate=float(settings["learning_rate"]), weight_decay=float(settings["weight_decay"]),
                       num_epochs=int(settings["num_epochs"]), batch_size=int(settings["batch_size"]),
                       warmup_ratio=float(settings["warmup_ratio"]), scheduler=settings["scheduler"],
                       patience=int(settings["patience"]), seed=seed, mixed_precision=mixed_precision,
                       sampler=settings.get("sampler", "none"))
