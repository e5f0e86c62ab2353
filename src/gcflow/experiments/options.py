"""Typed experiment options: each experiment declares a dataclass; `key=value` overrides are type-checked.

Values are parsed with the trainer's own parser (`gcflow.training.config.parse_value`), so lists are
written `a,b,c` and booleans `true/false`; unknown keys and bad values are one-line ConfigErrors.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from gcflow.training.config import ConfigError, parse_value
from gcflow.training.config import option as opt  # the trainer's field helper: help text, lists as tuples


@dataclasses.dataclass
class CommonOptions:
    """Options every experiment has."""

    seed: int = opt(0, "random seed (every draw of the experiment derives from it)")
    threads: int = opt(
        1, "CPU intra-op threads (1 is fastest for these small models on a shared 2-core machine; 0 = torch default)"
    )


def _fields(cls: type) -> list[tuple[str, Any, dataclasses.Field]]:
    hints = typing.get_type_hints(cls)
    return [(f.name, hints[f.name], f) for f in dataclasses.fields(cls)]


def parse_options(cls: type, overrides: list[str], experiment: str) -> Any:
    """An instance of the options dataclass `cls` with `key=value` overrides applied."""
    known = {name: tp for name, tp, _ in _fields(cls)}
    values: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                f"experiment option {item!r} is not of the form key=value; "
                f"see 'gcflow experiment {experiment} --options'"
            )
        key, text = item.split("=", 1)
        key = key.strip()
        if key not in known:
            raise ConfigError(f"unknown option {key!r} for experiment {experiment}; options are {', '.join(known)}")
        values[key] = parse_value(key, known[key], text)
    return cls(**values)


def describe(cls: type) -> str:
    """One line per option: key, default and help."""
    lines = []
    for name, _, f in _fields(cls):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        lines.append(f"  {name:<18} {str(shown):<28} {f.metadata.get('help', '')}")
    return "\n".join(lines)


def as_dict(options: Any) -> dict[str, Any]:
    """Options as JSON-able values (tuples become lists)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(options).items()}
