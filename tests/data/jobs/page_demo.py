"""A job for the browser's job page: print a line, wait for a file the test creates
(so the line is seen while the job runs), then write a CSV, an image and a text file."""

import argparse
import os
import struct
import sys
import time
import zlib

parser = argparse.ArgumentParser(description="Print, wait for a go-ahead file, write outputs.")
parser.add_argument("--go", help="wait (at most --patience s) until this file exists")
parser.add_argument("--patience", type=float, default=120.0)
parser.add_argument("--rows", type=int, default=3, help="rows of result.csv")
args = parser.parse_args()


def png(width: int, height: int) -> bytes:
    """A small valid PNG: a blue-to-green gradient."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(
        b"\0"
        + b"".join(
            bytes((20, 80 + 150 * x // width, 200 - 150 * y // height)) for x in range(width)
        )
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


print("first line <b>not bold</b> & <script>alert(1)</script>", flush=True)
print("a warning", file=sys.stderr, flush=True)
if args.go:
    deadline = time.monotonic() + args.patience
    while not os.path.exists(args.go) and time.monotonic() < deadline:
        time.sleep(0.05)
print("go-ahead seen", flush=True)
with open("result.csv", "w") as handle:
    handle.write("name,value\n")
    for i in range(args.rows):
        handle.write(f"row{i},<i>{i}</i>\n")
with open("plot.png", "wb") as handle:
    handle.write(png(64, 48))
with open("notes.txt", "w") as handle:
    handle.write("plain notes <img src=x>\n")
print("done", flush=True)
