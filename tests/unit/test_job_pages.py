"""``services.job_pages``' plain parts: log reads from an offset (split UTF-8 characters,
a file that shrank), previews (bounded CSV, images only by name AND content), the
list's filters and cursors."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from jobferry.errors import ValidationError
from jobferry.services.job_pages import (
    PREVIEW_COLUMNS,
    PREVIEW_ROWS,
    decode_cursor,
    encode_cursor,
    parse_filter,
    preview,
    read_from,
    utf8_boundary,
)

PNG_HEAD = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


def test_utf8_boundary_keeps_a_split_character_for_the_next_read() -> None:
    text = "naïve €".encode()
    assert utf8_boundary(text) == len(text)
    assert utf8_boundary(text[:-1]) == len(text) - 3  # € is 3 bytes: wait for all of them
    assert utf8_boundary(text[:-2]) == len(text) - 3
    assert utf8_boundary("ï".encode()[:1]) == 0
    assert utf8_boundary(b"") == 0


def test_read_from_an_offset_decodes_whole_characters_and_restarts_a_shrunk_file(
    tmp_path: Path,
) -> None:
    log = tmp_path / "stdout"
    assert read_from(log, 0).text == ""  # not there yet
    log.write_bytes("one €".encode()[:-1])
    first = read_from(log, 0)
    assert (first.text, first.start, first.end) == ("one ", 0, 4)
    with open(log, "ab") as handle:
        handle.write("€".encode()[-1:] + b"\ntwo\n")
    second = read_from(log, first.end)
    assert second.text == "€\ntwo\n" and second.end == log.stat().st_size
    assert read_from(log, second.end).text == ""
    assert read_from(log, 0, limit=3).text == "one"
    log.write_bytes(b"new\n")  # rewritten shorter (a log cap): from the start again
    assert read_from(log, second.end).text == "new\n"
    assert read_from(None, 7).end == 7


def test_csv_previews_are_bounded_in_rows_and_columns(tmp_path: Path) -> None:
    wide = tmp_path / "wide.csv"
    header = ",".join(f"c{i}" for i in range(PREVIEW_COLUMNS + 5))
    wide.write_text(header + "\n" + "\n".join(f"{i},x" for i in range(500)) + "\n")
    shown = preview(wide, "wide.csv")
    assert shown.kind == "csv" and shown.truncated
    assert len(shown.rows) == PREVIEW_ROWS and len(shown.rows[0]) == PREVIEW_COLUMNS
    small = tmp_path / "small.csv"
    small.write_text('a,b\n1,"<b>2</b>"\n')
    assert preview(small, "small.csv").rows == [["a", "b"], ["1", "<b>2</b>"]]
    assert not preview(small, "small.csv").truncated


def test_images_need_a_known_name_and_matching_bytes(tmp_path: Path) -> None:
    png = tmp_path / "plot.png"
    png.write_bytes(PNG_HEAD)
    assert preview(png, "plot.png").content_type == "image/png"
    assert preview(png, "plot.jpg").kind == "none"  # name and content disagree
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"<html><script>alert(1)</script>")
    assert preview(fake, "fake.png").kind == "none"
    svg = tmp_path / "x.svg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>')
    assert preview(svg, "x.svg").kind == "none"
    binary = tmp_path / "data.txt"
    binary.write_bytes(b"a\0b")
    assert preview(binary, "data.txt").kind == "none"


def test_filters_accept_every_face_s_state_names_and_reject_bad_dates() -> None:
    query = parse_filter(["completed"], " wc ", "", "2026-01-02", "2026-01-03", "ann")
    assert query.states == ("ok",) and query.script == "wc" and query.username == "ann"
    assert query.created_from == datetime(2026, 1, 2, tzinfo=UTC)
    assert query.created_until == datetime(2026, 1, 4, tzinfo=UTC)  # the whole last day
    assert parse_filter(["REVOKED"]).states == ("deleted",)
    with pytest.raises(ValidationError) as bad_state:
        parse_filter(["sideways"])
    assert list(bad_state.value.errors) == ["state"]
    with pytest.raises(ValidationError) as bad_date:
        parse_filter(date_from="yesterday")
    assert list(bad_date.value.errors) == ["from"]


def test_cursors_round_trip_and_a_damaged_one_is_a_validation_error() -> None:
    moment = datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    assert decode_cursor(encode_cursor(moment, "0123456789abcdef")) == (
        moment,
        "0123456789abcdef",
    )
    for damaged in ("%%%", "bm90IGEgY3Vyc29y", ""):
        with pytest.raises(ValidationError):
            decode_cursor(damaged)
