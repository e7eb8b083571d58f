"""Settings as dataclasses, turned into command-line flags (the ``run_glue.py`` / ``HfArgumentParser`` pattern).

A settings class is a plain dataclass whose fields are declared with :func:`option`: the default, the help text,
the value check (an ``argparse`` type such as :func:`msa.cli.positive_int`) and the choices, which may be a
function so that a registry (``FUSIONS``, ``LOSSES``, ``TEXT_POOLINGS``...) is read when the parser is built
rather than retyped. :func:`add_options` adds one flag per field to a parser (``--feature-fusion`` for
``feature_fusion``), :func:`from_args` builds the dataclass back from the parsed namespace, and
:func:`check_mapping` validates a JSON object (a preset, a ``best_config.json``) against the same fields: an
unknown key or a value of the wrong type or range is a :class:`msa.cli.UserError` that names the key and the file.

See docs/design.md, "Settings".
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from msa import cli

#: metadata key of the fields made by :func:`option`
_KEY = "msa_option"


@dataclasses.dataclass(frozen=True)
class Option:
    """How one field appears on the command line and how its value is checked."""

    help: str | Callable[[], str] = ""  # a text, or a function making it (e.g. from a registry)
    type: Callable[[str], Any] | None = None  # the argparse type: parses and range-checks one value
    choices: Sequence[str] | Callable[[], Sequence[str]] | None = None  # a sequence, or a function reading a registry
    flag: str | None = None  # the long flag (default: --field-name); "" = no flag (settable from files only)
    metavar: str | None = None
    group: str | None = None  # the --help group (default: the one add_options is given)

    def choice_list(self) -> list[str] | None:
        if self.choices is None:
            return None
        return list(self.choices() if callable(self.choices) else self.choices)


class LazyChoices(Sequence):
    """The choices of a flag read from a registry only when a value is checked or the help is shown.

    Building a parser then imports no registry (and so no torch): a stage whose outputs are up to date answers in
    well under a second. Membership, iteration and ``len`` read the registry once (``fn()``) and keep the list."""

    def __init__(self, fn: Callable[[], Sequence[str]]):
        self._fn, self._items = fn, None

    def _list(self) -> list:
        if self._items is None:
            self._items = list(self._fn())
        return self._items

    def __getitem__(self, i):
        return self._list()[i]

    def __len__(self) -> int:
        return len(self._list())

    def __contains__(self, value) -> bool:
        return value in self._list()

    def __iter__(self) -> Iterator:
        return iter(self._list())

    def __repr__(self) -> str:
        return f"LazyChoices({getattr(self._fn, '__name__', self._fn)})"


def option(default=None, help: str = "", *, type=None, choices=None, flag=None, metavar=None, group=None,
           default_factory=None):
    """A dataclass field with its command-line description (see :class:`Option`)."""
    meta = {_KEY: Option(help=help, type=type, choices=choices, flag=flag, metavar=metavar, group=group)}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def fields(cls) -> list[tuple[dataclasses.Field, Option]]:
    """The option fields of a settings dataclass, in declaration order."""
    return [(f, f.metadata[_KEY]) for f in dataclasses.fields(cls) if _KEY in f.metadata]


def _field_default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _annotation(cls, name: str):
    hints = typing.get_type_hints(cls)
    return hints.get(name)


def _base_type(tp):
    """``int`` for ``int``, ``int | None`` or ``Optional[int]``; else ``tp``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _flag(f: dataclasses.Field, opt: Option) -> str:
    return opt.flag if opt.flag is not None else "--" + f.name.replace("_", "-")


def add_options(parser: argparse.ArgumentParser, cls, *, group: str | None = None, skip: Iterable[str] = (),
                defaults: Mapping[str, Any] | None = None, unset: bool = False,
                default_note: Callable[[str, Any], str] | None = None,
                helps: Mapping[str, str] | None = None) -> dict[str, argparse._ActionsContainer]:
    """One flag per option field of ``cls`` on ``parser`` (a parser or an argument group), in groups (``group``,
    or the field's own).

    ``defaults`` overrides a field's default for these flags, ``helps`` its help text. ``unset=True`` gives every
    flag the default ``None`` so that the caller can tell an explicit flag from an absent one (layered settings);
    the help then ends with ``(default ...)`` from the dataclass, or ``default_note(name, default)`` when given.
    Returns the argument groups made, by title."""
    skip = set(skip)
    defaults = dict(defaults or {})
    groups: dict[str, argparse._ActionsContainer] = {}
    for f, opt in fields(cls):
        if f.name in skip or opt.flag == "":
            continue
        title = opt.group or group
        if title is None:
            target = parser
        else:
            if title not in groups:
                existing = [g for g in parser._action_groups if g.title == title]
                groups[title] = existing[0] if existing else parser.add_argument_group(title)
            target = groups[title]
        default = defaults.get(f.name, _field_default(f))
        tp = _base_type(_annotation(cls, f.name))
        text = (helps or {}).get(f.name, opt.help)
        if callable(opt.choices):  # a registry's names, listed by argparse when --help is shown
            text = _joined(text, "(one of %(choices)s)")
        kw: dict[str, Any] = {"dest": f.name, "help": text}
        if tp is bool and opt.type is None:
            kw.update(action="store_true", default=None if unset else bool(default))
            if unset:
                kw["help"] = _joined(text, f"(default {'on' if default else 'off'})")
        else:
            kw["type"] = opt.type or (tp if tp in (int, float, Path) else None)
            if kw["type"] is None:
                kw.pop("type")
            if callable(opt.choices):  # a registry: read when a value is checked or --help is shown
                kw["choices"] = LazyChoices(opt.choices)
                kw["metavar"] = opt.metavar or "NAME"
            elif opt.choices is not None:
                kw["choices"] = list(opt.choices)
            if opt.metavar:
                kw["metavar"] = opt.metavar
            if unset:
                kw["default"] = None
                note = default_note(f.name, default) if default_note else f"(default {_show(default)})"
                kw["help"] = _joined(text, note) if note else text
            else:
                kw["default"] = default
        target.add_argument(_flag(f, opt), **kw)
    return groups


def _joined(text: str | Callable[[], str], suffix: str) -> str | Callable[[], str]:
    """``text`` and ``suffix``; a help made by a function (from a registry) stays a function, called by
    :class:`msa.cli.ArgumentParser`'s formatter only when --help is shown."""
    if callable(text):
        return lambda: f"{text()} {suffix}".strip()
    return f"{text} {suffix}".strip()


def _show(value) -> str:
    if value in (None, ""):
        return "none"
    return str(value)


def from_args(cls, args: argparse.Namespace | Mapping[str, Any], **overrides):
    """``cls`` from the parsed flags (fields the namespace lacks, or holds as ``None`` for a non-optional field,
    keep their default), then ``overrides``."""
    raw = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in overrides:
            values[f.name] = overrides[f.name]
        elif f.name in raw and raw[f.name] is not None:
            values[f.name] = raw[f.name]
    return cls(**values)


def check_value(cls, name: str, value, source: str, registries: bool = True):
    """``value`` of field ``name`` of ``cls`` read from a file, checked as its flag checks it: a number where
    the field is a number (in range), one of the choices where it has choices. Returns the value as the flag
    would (``"5"`` -> ``5`` for an int field, ``5.0`` -> ``5``). ``registries=False`` leaves out the choices
    that a registry gives (no registry is imported: an up-to-date check's preliminary reading)."""
    table = {f.name: (f, opt) for f, opt in fields(cls)}
    if name not in table or value is None:
        return value
    f, opt = table[name]
    tp = _base_type(_annotation(cls, name))
    if tp is bool:
        if not isinstance(value, bool):
            raise cli.UserError(f"{source}: {name} must be true or false, got {value!r}")
        return value
    if tp in (int, float) or opt.type is not None and tp not in (str, Path):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise cli.UserError(f"{source}: {name} must be a number, got {value!r}")
        text = str(int(value)) if tp is int and isinstance(value, float) and value.is_integer() else str(value)
        try:
            return (opt.type or tp)(text)
        except (argparse.ArgumentTypeError, ValueError) as exc:
            raise cli.UserError(f"{source}: {name} {exc}") from None
    if not isinstance(value, str):
        raise cli.UserError(f"{source}: {name} must be a string, got {value!r}")
    choices = opt.choice_list() if registries or not callable(opt.choices) else None
    if choices is not None and value not in choices:
        raise cli.UserError(f"{source}: {name} must be one of {', '.join(map(str, choices))}, got {value!r}")
    if opt.type is not None:
        try:
            return opt.type(value)
        except (argparse.ArgumentTypeError, ValueError) as exc:
            raise cli.UserError(f"{source}: {name} {exc}") from None
    return value


def check_mapping(cls, data, source: str, *, aliases: Mapping[str, str] | None = None,
                  ignore: Iterable[str] = (), on_alias: Callable[[str, str], None] | None = None,
                  strict: bool = True, registries: bool = True) -> dict[str, Any]:
    """The fields of ``cls`` that the JSON object ``data`` sets, each checked (:func:`check_value`).

    ``aliases`` maps old spellings to field names (``on_alias(old, new)`` is told of each); keys in ``ignore``
    describe the file rather than set anything. With ``strict`` an unknown key is an error naming it, the file and
    the known keys; without, unknown keys are dropped (a file written by a newer or older version)."""
    if not isinstance(data, Mapping):
        raise cli.UserError(f"{source}: expected a JSON object of settings, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    aliases, ignore = dict(aliases or {}), set(ignore)
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in aliases:
            if on_alias is not None:
                on_alias(key, aliases[key])
            key = aliases[key]
        if key in names:
            out[key] = check_value(cls, key, value, source, registries)
        elif strict and key not in ignore:
            known = ", ".join(sorted(names)) + (f" (and {', '.join(sorted(ignore))})" if ignore else "")
            raise cli.UserError(f"{source}: unknown setting {key!r}; the settings are {known}")
    return out


# ------------------------------------------------------------------------------ data and output settings
@dataclasses.dataclass(frozen=True)
class DataSettings:
    """Where the user's data is and where derived data files go (every stage's ``data`` flags)."""

    data_root: Path = option(cli.DEFAULT_DATA_ROOT, "dataset root holding data/{guid}.jpg|.txt, train.txt and "
                             "test_without_label.txt (never modified)")
    work_dir: Path | None = option(None, "where phase 0 writes train_cleaned.txt, data_audit.csv, "
                                   "data_inventory.csv and splits/, and where later phases read them (default: the "
                                   "project's dataset/ folder, even when --data-root points elsewhere)",
                                   type=cli.output_dir)
    split: str = option("default", "name of the persisted split in <work-dir>/splits/<name>.csv (phase 0 writes "
                        "'default' and, with --folds K, 'cv{K}-0' ... 'cv{K}-{K-1}')")


@dataclasses.dataclass(frozen=True)
class OutputDirs:
    """Where a stage writes its tables and run folders, and its figures."""

    results_dir: Path = option(None, "where tables and runs go")
    figures_dir: Path = option(None, "where the figures go")


def add_output_dirs(group, stage_dir: Path, results: str | None = None, figures: str | None = None,
                    order: Sequence[str] = ("results_dir", "figures_dir")) -> None:
    """``--results-dir`` and ``--figures-dir`` (:class:`OutputDirs`) on ``group``, defaulting to ``stage_dir``'s
    ``results/`` and ``figures/``; ``results`` / ``figures`` say what goes there."""
    helps = {k: v for k, v in (("results_dir", results), ("figures_dir", figures)) if v}
    defaults = {"results_dir": Path(stage_dir) / "results", "figures_dir": Path(stage_dir) / "figures"}
    for name in order:
        add_options(group, OutputDirs, skip=[k for k in defaults if k != name], defaults=defaults, helps=helps)
