"""YAML reading for the configuration: one-line errors, and duplicate keys refused.

Split from ``jobferry.config`` (the schema) to keep each module small.
"""

from __future__ import annotations

from typing import Any

import yaml

from jobferry.errors import ConfigError


def _yaml_error(source: str, exc: yaml.YAMLError) -> ConfigError:
    """One line: where the YAML broke and why."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    what = " ".join(str(problem or exc).split())
    context = getattr(exc, "context", None)
    if context:
        what = f"{' '.join(str(context).split())}: {what}"
    return ConfigError(f"{source}: not valid YAML{where}: {what}")


def load_yaml(source: str, text: str) -> Any:
    """Parse *text*; duplicate keys are an error (YAML would keep the last silently)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicates(source, node, [])
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise _yaml_error(source, exc) from exc
    finally:
        loader.dispose()


def _check_duplicates(source: str, node: yaml.Node, path: list[str]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            dotted = ".".join([*path, key])
            if key_node.tag != "tag:yaml.org,2002:merge" and key in seen:
                line = key_node.start_mark.line + 1
                raise ConfigError(
                    f"{source}: {dotted}: duplicate key (line {line}); give each key once"
                )
            seen.add(key)
            _check_duplicates(source, value_node, [*path, key])
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_duplicates(source, item, [*path, str(index)])
