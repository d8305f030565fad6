"""The JSON round trip every network config shares (configs are saved beside their weights)."""

from __future__ import annotations

import dataclasses
from enum import Enum
from typing import Any, Self


class JsonConfig:
    """Mixin for frozen config dataclasses: `to_dict()` is JSON-ready, `from_dict()` rejects unknown keys."""

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {k: v.value if isinstance(v, Enum) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
        return cls(**data)
