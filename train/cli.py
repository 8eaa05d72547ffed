"""Command lines of the training scripts, made by tyro from their config dataclasses.

Every field of a script's config sections (``DataConfig``, ``LoopConfig``, the script's own) is a flag named after
it (``--val-fraction``), with the field's ``Attributes:`` docstring entry as its help and the section's value as its
default; booleans get ``--flag`` / ``--no-flag``. Each model the script trains gets ``--PREFIX-preset`` (a named
architecture of :mod:`cxrdistill.models.presets`) and one optional override per architecture field: any override
that changes the architecture makes the saved config say ``custom``.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import docstring_parser
import tyro

from cxrdistill.models.presets import preset_config, presets_for

# fields of a model config that a training script takes from the data, calibration or another flag (--pretrained)
NOT_FLAGS = (
    "model_type",
    "preset",
    "in_chans",
    "global_labels",
    "local_labels",
    "global_thresholds",
    "local_thresholds",
    "heatmap_threshold",
    "input_crop",  # set by --lung-crop
    "rule_out_threshold",
    "rule_in_threshold",
    "rule_out_sensitivity",
    "rule_in_specificity",
    "positive_label",
    "pretrained_weights",
    "mean",
    "std",
)


@dataclass(frozen=True)
class ModelFlags:
    """A model a script trains: its config class, the preset it defaults to, and the prefix of its flags."""

    config_class: type
    default_preset: str
    prefix: str = ""


def field_docs(cls: type) -> dict[str, str]:
    """Each field's text in the ``Attributes:`` sections of ``cls``'s and its bases' docstrings (docstring_parser)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        text = klass.__dict__.get("__doc__")
        if text:
            for param in docstring_parser.parse(inspect.cleandoc(text)).params:
                for name in param.arg_name.split(","):
                    docs[name.strip()] = " ".join((param.description or "").split())
    return docs


def _override_flags(model: ModelFlags) -> type:
    """The dataclass of one model's flags: ``PREFIX_preset`` and an optional override per architecture field."""
    config_class, prefix = model.config_class, model.prefix
    what = config_class.model_type_default().removeprefix("cxrdistill-")
    docs = field_docs(config_class)
    hints = typing.get_type_hints(config_class)
    presets = Literal[tuple(presets_for(config_class.model_type_default()))]  # type: ignore[valid-type]
    fields: list[tuple[str, Any, Any]] = [
        (
            prefix + "preset",
            Annotated[presets, tyro.conf.arg(help=f"the {what}'s named architecture (cxrdistill.models.presets)")],
            dataclasses.field(default=model.default_preset),
        )
    ]
    for f in dataclasses.fields(config_class):
        if f.name in NOT_FLAGS:
            continue
        if f.name not in docs:
            raise TypeError(f"{config_class.__name__}.{f.name} has no help: document it under Attributes")
        hint = hints[f.name]
        optional = hint if type(None) in typing.get_args(hint) else hint | None
        help_text = f"{what}: {docs[f.name]} (default: the preset's, else {f.default!r})"
        fields.append((prefix + f.name, Annotated[optional, tyro.conf.arg(help=help_text)], None))
    return dataclasses.make_dataclass(f"{config_class.__name__}Flags", fields)


def _hiding(section: Any, hidden: Sequence[str]) -> Any:
    """``section`` as an instance of a subclass whose ``hidden`` fields are not flags (they keep their values)."""
    hints = typing.get_type_hints(type(section))
    names = [f.name for f in dataclasses.fields(section) if f.name in hidden]
    if not names:
        return section
    redeclared = [
        (name, tyro.conf.Suppress[hints[name]], dataclasses.field(default_factory=lambda n=name: getattr(section, n)))
        for name in names
    ]
    subclass = dataclasses.make_dataclass(type(section).__name__, redeclared, bases=(type(section),))
    subclass.__doc__ = type(section).__doc__
    return subclass(**{f.name: getattr(section, f.name) for f in dataclasses.fields(section)})


@dataclass(frozen=True)
class Script:
    """A training script's command line: its description, config sections and models.

    Attributes:
        doc: the script's docstring; its first line describes the command.
        sections: the config dataclass instances whose fields are flags (their values are the defaults).
        models: the models the script trains, each with ``--PREFIX-preset`` and architecture overrides.
        hidden: fields of the sections that are not flags (they keep their values).
    """

    doc: str
    sections: tuple[Any, ...]
    models: tuple[ModelFlags, ...] = ()
    hidden: tuple[str, ...] = ("extra",)

    def arguments(self) -> type:
        """The dataclass tyro parses: one field per section (flags not prefixed) and per model's flags."""
        fields = [
            (self._section_name(i), type(shown), dataclasses.field(default_factory=lambda s=shown: s))
            for i, shown in enumerate(_hiding(section, self.hidden) for section in self.sections)
        ]
        for model in self.models:
            flags = _override_flags(model)
            fields.append((f"{model.prefix}model", flags, dataclasses.field(default_factory=flags)))
        arguments = dataclasses.make_dataclass("Arguments", fields)
        arguments.__doc__ = self.doc.strip().splitlines()[0]
        return arguments

    def flags(self) -> dict[str, str]:
        """``--flag`` -> its help text, for every flag (empty where a field has no ``Attributes:`` entry); the fields
        of a nested dataclass are flags of their own (``DistillConfig.weights`` -> ``--alpha``)."""
        helps: dict[str, str] = {}

        def add(section: Any) -> None:
            docs = field_docs(type(section))
            for f in dataclasses.fields(section):
                value = getattr(section, f.name)
                if f.name in self.hidden:
                    continue
                if dataclasses.is_dataclass(value):
                    add(value)
                else:
                    helps["--" + f.name.replace("_", "-")] = docs.get(f.name, "")

        for section in self.sections:
            add(section)
        for model in self.models:
            for name, hint in typing.get_type_hints(_override_flags(model), include_extras=True).items():
                helps["--" + name.replace("_", "-")] = next(
                    (m.help for m in getattr(hint, "__metadata__", ()) if getattr(m, "help", None)), ""
                )
        return helps

    def parse(self, argv: Sequence[str] | None = None) -> tuple[list[Any], list[Any]]:
        """Parse ``argv`` into ``(sections, model configs)``, in the order given.

        Raises:
            SystemExit: a bad flag or value (tyro's message), or overrides that make an invalid model.
        """
        arguments = self.arguments()
        parsed = tyro.cli(arguments, args=list(argv) if argv is not None else None, config=(tyro.conf.OmitArgPrefixes,))
        values = [_plain(getattr(parsed, self._section_name(i)), section) for i, section in enumerate(self.sections)]
        configs = [_model_config(model, getattr(parsed, f"{model.prefix}model")) for model in self.models]
        return values, configs

    def _section_name(self, index: int) -> str:
        """``DataConfig`` -> ``data``: the heading of the section's flags in ``--help``."""
        return type(self.sections[index]).__name__.removesuffix("Config").lower() or f"section{index}"


def _plain(parsed: Any, original: Any) -> Any:
    """The parsed section as an instance of the section's own class (not the subclass that hid fields)."""
    if type(parsed) is type(original):
        return parsed
    return type(original)(**{f.name: getattr(parsed, f.name) for f in dataclasses.fields(original)})


def _model_config(model: ModelFlags, flags: Any) -> Any:
    values = dataclasses.asdict(flags)
    prefix = model.prefix
    overrides = {
        name.removeprefix(prefix): value
        for name, value in values.items()
        if name != prefix + "preset" and value is not None
    }
    try:
        return preset_config(model.config_class, values[prefix + "preset"], **overrides)
    except ValueError as error:
        raise SystemExit(f"invalid model configuration: {error}") from error


def script_command(script: str, argv) -> str:
    """The command line of a run, for its card."""
    return f"python {script} " + " ".join(argv if argv is not None else sys.argv[1:])
