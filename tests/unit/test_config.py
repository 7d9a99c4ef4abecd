"""Loading and validating the configuration: defaults, sources, errors, the sample file."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from jobferry.config import CONFIG_ENV, Config, config_as_dict, load_config
from jobferry.errors import ConfigError
from tests.helpers import ROOT

pytestmark = pytest.mark.engine_independent

SAMPLE = ROOT / "conf" / "jobferry.yml"


def write(tmp_path: Path, text: str, name: str = "jobferry.yml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    message = caught.value.message
    assert "\n" not in message, message
    assert message.startswith(f"{path}: "), message
    return message


# --- defaults and sources -------------------------------------------------------------------


def test_load_config__without_a_file_every_key_has_its_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None, environ={})
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8080)
    assert config.data_dir == "./jobferry-data"
    assert config.data_path == tmp_path.resolve() / "jobferry-data"
    assert config.database_url == f"sqlite:///{tmp_path.resolve() / 'jobferry-data'}/jobferry.db"
    assert config.runners.local.slots is None
    assert config.local_slots == (os.cpu_count() or 1)
    assert config == Config()
    effective = config_as_dict(config)
    assert effective["runners"]["local"]["slots"] == config.local_slots
    assert effective["database"]["url"] == config.database_url
    assert effective["data_dir"] == str(config.data_path)


def test_load_config__reads_the_file_named_by_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  port: 9001\n")
    config = load_config(None, environ={CONFIG_ENV: str(path)})
    assert config.server.port == 9001


def test_load_config__ignores_the_process_environment_when_given_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(write(tmp_path, "server:\n  port: 9001\n")))
    assert load_config(None, environ={}).server.port == 8080
    assert load_config(None).server.port == 9001


def test_load_config__explicit_path_beats_the_environment(tmp_path: Path) -> None:
    from_env = write(tmp_path, "server:\n  port: 9001\n", "env.yml")
    given = write(tmp_path, "server:\n  port: 9002\n", "given.yml")
    config = load_config(given, environ={CONFIG_ENV: str(from_env)})
    assert config.server.port == 9002


def test_load_config__empty_file_and_empty_sections_mean_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "# nothing but a comment\n"), environ={}) == Config()
    text = "server:\n  # port: 1\nrunners:\n  local:\nlogging:\n"
    assert load_config(write(tmp_path, text, "sections.yml"), environ={}) == Config()


def test_load_config__overrides_win_over_the_file_and_none_is_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, "data_dir: /from/file\nserver:\n  port: 9001\n  host: 0.0.0.0\n")
    config = load_config(
        path,
        environ={},
        overrides={
            "data_dir": str(tmp_path / "cli"),
            "server.port": 9100,
            "server.host": None,
            "runners.local.slots": 3,
        },
    )
    assert config.data_path == tmp_path / "cli"
    assert config.database_url == f"sqlite:///{tmp_path / 'cli'}/jobferry.db"
    assert (config.server.port, config.server.host) == (9100, "0.0.0.0")
    assert config.local_slots == 3


def test_load_config__overrides_without_a_file_and_into_an_empty_section(tmp_path: Path) -> None:
    assert load_config(None, environ={}, overrides={"server.port": 0}).server.port == 0
    path = write(tmp_path, "server:\n")
    assert load_config(path, environ={}, overrides={"server.port": 1}).server.port == 1


def test_load_config__overrides_are_validated_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"<defaults>: server\.port: .*less than or equal"):
        load_config(None, environ={}, overrides={"server.port": 70000})
    path = write(tmp_path, "server: 5\n")
    with pytest.raises(ConfigError, match=r"server: expected a mapping"):
        load_config(path, environ={}, overrides={"server.port": 1})


def test_load_config__database_url_given_is_used_as_is(tmp_path: Path) -> None:
    path = write(tmp_path, "database:\n  url: sqlite:////elsewhere/x.db\n  pool_size: 2\n")
    config = load_config(path, environ={})
    assert config.database_url == "sqlite:////elsewhere/x.db"
    assert config.database.pool_size == 2


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("prot: 1\n", "prot", "unknown key (expected one of: data_dir, server,"),
        ("server:\n  prot: 8080\n", "server.prot", "expected one of: host, port,"),
        ("runners:\n  local:\n    slotz: 2\n", "runners.local.slotz", "slots, kill_grace_s"),
    ],
    ids=["top-level", "nested", "deeper"],
)
def test_load_config__unknown_key_names_file_and_dotted_key(
    tmp_path: Path, text: str, key: str, expected: str
) -> None:
    message = config_error(write(tmp_path, text))
    assert f": {key}: unknown key" in message
    assert expected in message


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ('server:\n  port: "abc"\n', "server.port", "valid integer (got 'abc')"),
        ('server:\n  port: "8080"\n', "server.port", "valid integer (got '8080')"),
        ("server:\n  port: true\n", "server.port", "valid integer (got True)"),
        ("server:\n  port: 80.5\n", "server.port", "valid integer (got 80.5)"),
        ("server:\n  port: 70000\n", "server.port", "less than or equal to 65535 (got 70000)"),
        ("server:\n  port: -1\n", "server.port", "greater than or equal to 0 (got -1)"),
        ("server:\n  xheaders: maybe\n", "server.xheaders", "valid boolean (got 'maybe')"),
        ("server:\n  host: 5\n", "server.host", "valid string (got 5)"),
        ("logging:\n  level: LOUD\n", "logging.level", "'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
        (
            "scripts:\n  introspection_timeout_s: 0\n",
            "scripts.introspection_timeout_s",
            "greater than 0",
        ),
        ("runners:\n  local:\n    slots: -2\n", "runners.local.slots", "greater than or equal"),
        ("database:\n  pool_size: 0\n", "database.pool_size", "greater than or equal to 1"),
        ("server: 5\n", "server", "valid dictionary"),
        ("server:\n  - port\n", "server", "valid dictionary"),
        ("web:\n  session_idle_s: 0\n", "web.session_idle_s", "greater than 0"),
        ("web:\n  session_touch_s: 600.0\n  session_idle_s: 60.0\n", "web", "shorter than"),
    ],
)
def test_load_config__wrong_type_or_bad_value_names_file_key_and_expectation(
    tmp_path: Path, text: str, key: str, expected: str
) -> None:
    message = config_error(write(tmp_path, text))
    assert f": {key}: " in message
    assert expected in message


def test_load_config__every_problem_is_reported_at_once(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, "server:\n  port: x\n  prot: 1\nlogging:\n  level: 1\n"))
    for key in ("server.port", "server.prot", "logging.level"):
        assert key in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- a\n- b\n", "got a list"),
        ("just words\n", "got a str"),
        ("42\n", "got a int"),
    ],
)
def test_load_config__top_level_must_be_a_mapping(tmp_path: Path, text: str, expected: str) -> None:
    message = config_error(write(tmp_path, text))
    assert "(top level): expected a mapping of keys" in message
    assert expected in message


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("server: [\n", "line 2, column 1"),
        ("server:\n\tport: 1\n", "line 2, column 1"),
        ("server:\n  port: 1\n bad indent: 2\n", "line 3"),
    ],
)
def test_load_config__invalid_yaml_is_one_line_with_its_position(
    tmp_path: Path, text: str, where: str
) -> None:
    message = config_error(write(tmp_path, text))
    assert "not valid YAML at " in message
    assert where in message


def test_load_config__duplicate_key_is_an_error(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, "server:\n  port: 1\n  host: x\n  port: 2\n"))
    assert "server.port: duplicate key (line 4)" in message


def test_load_config__binary_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "binary.yml"
    path.write_bytes(b"\xff\xfe\x00\x01server")
    assert "not UTF-8 text" in config_error(path)


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_load_config__unreadable_file_names_file_and_reason(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "nope.yml"
    if kind == "directory":
        path.mkdir()
    message = config_error(path)
    assert "cannot read" in message
    assert ("No such file" if kind == "missing" else "directory") in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_load_config__file_without_read_permission_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  port: 1\n")
    path.chmod(0)
    try:
        assert "cannot read: Permission denied" in config_error(path)
    finally:
        path.chmod(0o600)


def test_load_config__missing_file_named_by_environment_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "missing.yml"
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: cannot read"):
        load_config(None, environ={CONFIG_ENV: str(path)})


# --- the sample file ------------------------------------------------------------------------


def _schema_keys(model: type[BaseModel], prefix: str = "") -> list[tuple[str, bool]]:
    """Every dotted key of the schema, with whether it is a leaf (not a section)."""
    keys: list[tuple[str, bool]] = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.append((dotted, False))
            keys += _schema_keys(annotation, f"{dotted}.")
        else:
            keys.append((dotted, True))
    return keys


def _sample_keys(text: str) -> dict[str, bool]:
    """Dotted key of every `key:` line of the sample → whether a comment is right above it."""
    found: dict[str, bool] = {}
    stack: list[tuple[int, str]] = []
    previous = ""
    for line in text.splitlines():
        match = re.match(r"^( *)([A-Za-z_][A-Za-z0-9_]*):(\s|$)", line)
        if match:
            indent = len(match.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, match.group(2)))
            dotted = ".".join(name for _, name in stack)
            assert dotted not in found, f"{dotted} appears twice in the sample"
            found[dotted] = previous.lstrip().startswith("#")
        if line.strip():
            previous = line
    return found


def test_sample_config__parses_to_the_defaults(tmp_path: Path) -> None:
    config = load_config(SAMPLE, environ={})
    assert config.model_dump() == Config().model_dump()


def test_sample_config__documents_every_key_of_the_schema() -> None:
    documented = _sample_keys(SAMPLE.read_text(encoding="utf-8"))
    # Entries of a mapping of named destinations are data, not schema keys.
    documented = {k: v for k, v in documented.items() if not k.startswith("destinations.")}
    schema = _schema_keys(Config)
    assert sorted(documented) == sorted(key for key, _ in schema), "sample and schema differ"
    undocumented = [key for key, leaf in schema if leaf and not documented[key]]
    assert undocumented == [], f"keys without a comment line above them: {undocumented}"


@pytest.mark.parametrize("where", ["data", "data/jobs", "."], ids=["itself", "inside", "above"])
def test_tes_file_roots__overlapping_the_data_directory_is_an_error(
    tmp_path: Path, where: str
) -> None:
    """A file:// root over the data directory would hand every TES user the store,
    the secret and other users' job files."""
    root = tmp_path / where
    with pytest.raises(ValueError, match="overlaps the data directory"):
        Config.model_validate(
            {"data_dir": str(tmp_path / "data"), "tes": {"file_roots": [str(root)]}}
        )
    Config.model_validate(
        {"data_dir": str(tmp_path / "data"), "tes": {"file_roots": [str(tmp_path / "shared")]}}
    )
