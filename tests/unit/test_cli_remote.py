"""``jobferry remote``'s pure parts: following a log through the details' tail window,
the multipart body's announced length, ``--limit-rate`` and the key file's mode rule."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from jobferry.cli.remote import parse_rate, settings
from jobferry.cli.remote.commands import _new_text
from jobferry.cli.remote.progress import Silent
from jobferry.cli.remote.transfer import Multipart
from jobferry.errors import ConfigError

pytestmark = pytest.mark.engine_independent


def test_new_text__appended_output_and_a_moving_tail_window() -> None:
    assert _new_text("", "a\n") == "a\n"
    assert _new_text("a\n", "a\nb\n") == "b\n"
    assert _new_text("a\nb\n", "a\nb\n") == ""
    # The daemon sends the last MiB only: the window moved, the old end is still inside.
    old = "".join(f"line {i}\n" for i in range(1000))
    moved = old[500:] + "new 1\nnew 2\n"
    assert _new_text(old, moved) == "new 1\nnew 2\n"
    # Grew past the window between two reads: what was not seen is marked, not invented.
    assert _new_text(old, "x" * 10).startswith("[... jobferry: log output skipped")


def test_multipart__announced_length_is_the_bytes_sent(tmp_path: Path) -> None:
    one = tmp_path / 'we"ird\nname.txt'
    one.write_bytes(os.urandom(3 * (1 << 20) + 7))
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    form = Multipart({"job_name": "ünï", "command": "-i doc"}, {"doc": one, "other": empty})
    body = b"".join(form.chunks(Silent()))
    assert len(body) == form.length()
    assert form.file_bytes() == 3 * (1 << 20) + 7
    assert b'filename="we%22ird%0Aname.txt"' in body and body.endswith(b"--\r\n")


def test_parse_rate__curl_style_suffixes() -> None:
    assert parse_rate("500") == 500
    assert parse_rate("20M") == 20 * (1 << 20)
    assert parse_rate("1.5k") == 1536
    for bad in ("0", "fast", "-1M", "1T"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_rate(bad)


def test_read_private__group_or_other_access_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("jf_x\n")
    for mode in (0o600, 0o400):
        os.chmod(path, mode)
        assert settings.read_private(path, "key file") == "jf_x\n"
    for mode in (0o640, 0o604, 0o660, 0o644):
        os.chmod(path, mode)
        with pytest.raises(ConfigError, match=f"has mode {mode:04o}.*chmod 600"):
            settings.read_private(path, "key file")


def test_resolve__options_then_environment_then_client_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("JOBFERRY_URL", raising=False)
    monkeypatch.delenv("JOBFERRY_KEY", raising=False)
    client = tmp_path / "jobferry" / "client.yml"
    client.parent.mkdir()
    client.write_text("url: http://file.example:1/\nkey: jf_file\n")
    os.chmod(client, 0o600)
    assert settings.resolve(None, None) == settings.Target("http://file.example:1", "jf_file")
    monkeypatch.setenv("JOBFERRY_KEY", "jf_env")
    monkeypatch.setenv("JOBFERRY_URL", "http://env.example")
    os.chmod(client, 0o644)  # not read: the environment gives both
    assert settings.resolve(None, None) == settings.Target("http://env.example", "jf_env")
    assert settings.resolve("https://opt.example/base/", None).url == "https://opt.example/base"
    with pytest.raises(ConfigError, match="not an http"):
        settings.resolve("file:///etc/passwd", None)
