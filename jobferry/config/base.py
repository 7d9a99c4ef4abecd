"""The base of every configuration section: strict, frozen, no unknown keys."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


class _Section(BaseModel):
    # strict: YAML already gives ints, floats, bools and strings, so nothing needs
    # coercing; a quoted "80" or a `true` where a number belongs is a mistake.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        """A section whose keys are all commented out (``server:`` alone) is empty."""
        if isinstance(data, dict):
            return {
                key: value
                for key, value in data.items()
                if not (value is None and _section_of(cls, key) is not None)
            }
        return data


def _section_of(model: type[BaseModel], key: Any) -> type[_Section] | None:
    """The section model of *model*'s field *key*, if that field is a section."""
    field = model.model_fields.get(key) if isinstance(key, str) else None
    annotation = field.annotation if field is not None else None
    if isinstance(annotation, type) and issubclass(annotation, _Section):
        return annotation
    return None
