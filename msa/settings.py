"""Model and training settings shared by the training phases: typed, with their flags, presets and resolution order.

:class:`Settings` (= :class:`ModelSettings` + :class:`TrainSettings`) is the one settings object; the flags are
generated from its fields (:mod:`msa.config`), with the choices read from the registries. Resolution: built-in
defaults < a base (e.g. phase 2's ``best_config.json``) < ``--preset FILE`` < explicit flags. See docs/design.md,
"Settings".
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from msa import cli
from msa.config import add_options, check_mapping, option
from msa.config import check_value as config_check_value

log = logging.getLogger(__name__)

#: Accelerate's mixed-precision modes of the heads' training (``--mixed-precision``); ``auto``: bf16 on a CPU with
#: native bfloat16, else no (msa.trainer.resolve_mixed_precision; ``MSA_MIXED_PRECISION`` overrides it)
MIXED_PRECISIONS = ("auto", "no", "fp16", "bf16")
#: what ``auto`` resolves to, and what a run's config records
RESOLVED_PRECISIONS = MIXED_PRECISIONS[1:]
MIXED_PRECISION_HELP = ("mixed precision of the heads' training (Accelerate): auto is bf16 on a CPU with native "
                        "bfloat16 (AVX512-BF16, AMX, Arm BF16) for heads of batch size x hidden >= 65536 (1.2-1.3x "
                        "faster there; validation stays float32), no (float32) elsewhere, or $MSA_MIXED_PRECISION "
                        "when set")
#: where a model runs (``--device``): ``auto`` is cuda when available
DEVICES = ("auto", "cpu", "cuda")


def _fusions():
    from msa.fusions import FUSIONS

    return sorted(FUSIONS)


def _losses():
    from msa.losses import LOSSES

    return sorted(LOSSES)


def _poolings():
    from msa.backbones import TEXT_POOLINGS

    return TEXT_POOLINGS


def _schedulers():
    from msa.trainer import SCHEDULERS

    return SCHEDULERS


def _samplers():
    from msa.trainer import SAMPLERS

    return SAMPLERS


def _side_help() -> str:
    from msa.side import HELP

    return (HELP + " (imputed, flagged and standardised with training-split statistics saved in the checkpoint; "
            "default: none, or what phase 2's best_config.json chose)")


@dataclass(frozen=True)
class ModelSettings:
    """What the model is: backbones, fusion, loss, side features and head size."""

    text_backbone: str = option("minilm", "text backbone: registry name or local Hugging Face folder")
    text_pooling: str | None = option(None, "sentence vector of the text backbone", choices=_poolings)
    image_backbone: str = option("efficientnet_lite0", "image backbone: registry name or local Hugging Face folder")
    feature_fusion: str = option("concat", "fusion of the modality features", choices=_fusions)
    loss_type: str = option("ce", "training loss", choices=_losses)
    side_features: str = option("", _side_help, metavar="LIST")
    hidden: int = option(256, "projection width per modality", type=cli.positive_int)
    dropout: float = option(0.3, "dropout in projections and head", type=cli.fraction)


@dataclass(frozen=True)
class TrainSettings:
    """How the model is trained: optimiser, schedule, early stopping, sampling."""

    learning_rate: float = option(1e-4, "AdamW learning rate", type=cli.positive_float)
    weight_decay: float = option(0.01, "AdamW weight decay", type=cli.non_negative_float)
    num_epochs: int = option(30, "maximum epochs", type=cli.positive_int)
    batch_size: int = option(64, "batch size", type=cli.positive_int)
    warmup_ratio: float = option(0.1, "share of steps with linear warm-up", type=cli.fraction)
    scheduler: str = option("cosine", "learning-rate schedule after warm-up", choices=_schedulers)
    patience: int = option(6, "stop after this many epochs without a better validation weighted F1 (0 = never)",
                           type=cli.non_negative_int)
    sampler: str = option("none", "training batches: as they come, or each class drawn equally often (phase 3's "
                          "grid sets it)", choices=_samplers, flag="")


@dataclass(frozen=True)
class Settings(TrainSettings, ModelSettings, Mapping):
    """The resolved model and training settings of a run: typed, validated, immutable.

    Built by :func:`resolve` (defaults < a base < ``--preset`` < flags) or :meth:`from_dict` (a run's
    ``config.json`` ``settings``, a ``best_config.json``); :meth:`replace` changes fields with the same checks.
    It also reads as a mapping (``s["feature_fusion"]``, ``dict(s)``, ``{**s}``) for JSON records."""

    # -- mapping view (JSON records, stamps, older call sites)
    def __getitem__(self, key: str):
        if key not in SETTING_NAMES:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(SETTING_NAMES)

    def __len__(self) -> int:
        return len(SETTING_NAMES)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in SETTING_NAMES}

    # -- typed construction
    @classmethod
    def from_dict(cls, data, source: str = "settings", strict: bool = True) -> Settings:
        """Defaults updated by the settings of the JSON object ``data`` (checked as their flags are; see
        :func:`msa.config.check_mapping`). ``strict=False`` drops keys this version does not know."""
        return cls(**_checked(data, source, strict=strict))

    def replace(self, source: str = "settings", **changes) -> Settings:
        """A copy with ``changes`` (checked as a preset's values are)."""
        return dataclasses.replace(self, **_checked(changes, source, strict=True, aliases=False))

    @property
    def model(self) -> ModelSettings:
        return ModelSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ModelSettings)})

    @property
    def hyperparameters(self) -> dict:
        return {k: getattr(self, k) for k in HYPERPARAMETERS}

    def train_config(self, seed: int, mixed_precision: str = "no"):
        """The trainer's :class:`msa.trainer.TrainConfig` for one seed (``mixed_precision`` ``auto`` resolved
        here, so that the run's config records what it trained in)."""
        from msa.trainer import TrainConfig, resolve_mixed_precision

        return TrainConfig(learning_rate=float(self.learning_rate), weight_decay=float(self.weight_decay),
                           num_epochs=int(self.num_epochs), batch_size=int(self.batch_size),
                           warmup_ratio=float(self.warmup_ratio), scheduler=self.scheduler,
                           patience=int(self.patience), seed=seed,
                           mixed_precision=resolve_mixed_precision(mixed_precision, self.batch_size,
                                                                   self.hidden),
                           sampler=self.sampler)


#: every setting, in the order records list them
SETTING_NAMES = ("text_backbone", "text_pooling", "image_backbone", "feature_fusion", "loss_type", "learning_rate",
                 "weight_decay", "dropout", "num_epochs", "batch_size", "hidden", "warmup_ratio", "scheduler",
                 "patience", "sampler", "side_features")
assert set(SETTING_NAMES) == {f.name for f in dataclasses.fields(Settings)}
#: the built-in defaults, as a plain dict
DEFAULTS = Settings().to_dict()
#: keys that describe the model and its training (what best_config.json carries between phases)
HYPERPARAMETERS = ("feature_fusion", "learning_rate", "weight_decay", "dropout", "num_epochs", "batch_size",
                   "hidden", "warmup_ratio", "scheduler", "patience", "side_features")
#: old spellings a preset may still use (with a warning): one spelling per setting
_ALIASES = {"fusion": "feature_fusion", "loss": "loss_type"}
#: keys of a preset file that describe it rather than set anything
PRESET_METADATA = ("name", "description")


def _checked(data, source: str, strict: bool, aliases: bool = True, registries: bool = True) -> dict:
    def warn(old, new):
        log.warning("%s: %r is an old spelling of %r (accepted for now; please rename it)", source, old, new)

    return check_mapping(Settings, data, source, aliases=_ALIASES if aliases else None, ignore=PRESET_METADATA,
                         on_alias=warn if registries else None, strict=strict, registries=registries)


@dataclass(frozen=True)
class RunOptions:
    """How a phase runs its trainings (not part of the model's settings)."""

    seeds: str = option("42", "comma-separated seeds; one run per seed", group="training")
    mixed_precision: str = option("auto", MIXED_PRECISION_HELP, choices=MIXED_PRECISIONS, group="training")


def _default_note(name: str, default) -> str:
    if name == "text_pooling":
        return "(default: the backbone's own, mean for minilm)"
    if name == "side_features":
        return ""
    return f"(default {default})"


def add_model_args(p, fusion: bool = True, loss: bool = True) -> None:
    """``--preset`` and the model flags (:class:`ModelSettings` and the model-shape fields of
    :class:`TrainSettings`), each defaulting to ``None`` so that :func:`resolve` can layer them."""
    m = p.add_argument_group("model")
    m.add_argument("--preset", default=None,
                   help="JSON file of settings (e.g. configs/seed_bert_swinv2.json); explicit flags still win")
    skip = [k for k, keep in (("feature_fusion", fusion), ("loss_type", loss)) if not keep]
    add_options(p, ModelSettings, group="model", skip=skip, unset=True, default_note=_default_note)


def add_training_args(p, seeds: str = "42", resume: bool = True) -> None:
    """The training flags (:class:`TrainSettings`, layered like the model flags) and :class:`RunOptions`."""
    add_options(p, TrainSettings, group="training", unset=True, default_note=_default_note)
    groups = add_options(p, RunOptions, defaults={"seeds": seeds})
    if resume:
        add_resume_arg(groups["training"])


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


def resolve(args, base: dict | None = None, registries: bool = True) -> Settings:
    """Defaults < ``base`` < ``--preset`` < explicit flags, each layer checked (an unknown key of a preset, or a
    value of the wrong type or range, is a :class:`msa.cli.UserError` naming the key and the file).

    ``registries=False``: the names a registry gives (fusion, loss, ...) are not checked and no registry (torch) is
    imported, and old spellings are not warned of: what a stage's up-to-date check reads before it knows whether
    it has work to do; the stage resolves again, fully, once it has."""
    values = _checked(base or {}, "the settings it starts from", strict=False, registries=registries)
    preset = getattr(args, "preset", None)
    if preset:
        values.update(_checked(read_json_file(preset, "preset"), f"preset {preset}", strict=True,
                               registries=registries))
    for k in SETTING_NAMES:
        if getattr(args, k, None) is not None:
            values[k] = getattr(args, k)
    return Settings(**values)


def check_value(key: str, value, source: str):
    """``value`` of setting ``key`` from a preset or a base file, checked as its flag would be."""
    return config_check_value(Settings, key, value, source)


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise cli.UserError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise cli.UserError("--seeds is empty")
    return seeds


def train_config(settings, seed: int, mixed_precision: str = "no"):
    """The trainer's config of ``settings`` (a :class:`Settings` or a dict of settings) for one seed."""
    if not isinstance(settings, Settings):
        settings = Settings.from_dict(settings, strict=False)
    return settings.train_config(seed, mixed_precision)
