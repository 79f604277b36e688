"""A sampler's settings from keyword options: the one check every method's config uses."""
from __future__ import annotations

from dataclasses import fields
from typing import TypeVar

T = TypeVar("T")


def config_from(cls: type[T], method: str, **options) -> T:
    """cls (a dataclass of settings) with the given fields replaced; ValueError naming the
    options that are not fields of it."""
    unknown = sorted(set(options) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"unknown {method} option(s): {', '.join(unknown)}")
    return cls(**options)
