"""A job whose every visible part is hostile HTML <script>alert('description')</script>:
its description, help, choices, stdout, stderr, output names and contents. The XSS
browser test shows it on every page and checks that nothing of it runs or is parsed."""

import argparse
import os
import shutil
import sys
import time

TAG = '"><img src=x onerror=alert(1)>'
parser = argparse.ArgumentParser(
    description="Prints HTML <script>alert(3)</script><img src=x onerror=alert(3)>"
)
parser.add_argument(
    "--infile", type=argparse.FileType("r"), help="input <img src=x onerror=alert(4)>"
)
parser.add_argument(
    "--mode",
    choices=["<b>plain</b>", TAG],
    default="<b>plain</b>",
    help="a choice <svg onload=alert(5)></svg>",
)
parser.add_argument("--title", default=TAG, help="a text value </textarea><img src=x>")
parser.add_argument("--start", help="wait (at most 120 s) for this file before printing")
parser.add_argument("--go", help="wait (at most 120 s) for this file before finishing")
args = parser.parse_args()


def wait_for(path: str | None) -> None:
    deadline = time.monotonic() + 120
    while path and not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)


wait_for(args.start)

for stream in (sys.stdout, sys.stderr):
    print("<script>alert(1)</script>", file=stream, flush=True)
    print(f"{TAG} mode={args.mode} title={args.title}", file=stream, flush=True)
wait_for(args.go)
print("</pre><iframe src=javascript:alert(1)></iframe> go-ahead seen", flush=True)
if args.infile:
    args.infile.close()
    shutil.copyfile(args.infile.name, f"{TAG}.txt")
with open("table.csv", "w") as handle:
    handle.write('name,"<img src=x onerror=alert(1)>"\n')
    handle.write('<script>alert(1)</script>,"<b>bold?</b>"\n')
with open("page.html", "w") as handle:
    handle.write("<html><body><script>alert(1)</script><img src=x onerror=alert(1)></body>\n")
with open("image.svg", "w") as handle:
    handle.write(
        '<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)" width="10" height="10">'
        "<script>alert(1)</script></svg>\n"
    )
print("done", flush=True)
