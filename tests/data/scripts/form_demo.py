"""A script for the browser's generated form: one parameter of each kind the form
renders (int, float, choice, flag, input file, nargs, a mutually exclusive group,
an argument group). It prints what it was given as one JSON line, with the
bytes of its input files, so tests can check the job ran with the right values."""

import argparse
import json

parser = argparse.ArgumentParser(description="Count the lines of a file, in style.")
parser.add_argument("data", type=argparse.FileType("r"), help="The file to read.")
parser.add_argument("--times", type=int, default=2, help="How often to repeat.")
parser.add_argument("--ratio", type=float, default=0.5, help="A ratio between 0 and 1.")
parser.add_argument("--color", choices=["red", "green", "blue"], default="green")
parser.add_argument("--shout", action="store_true", help="Print in capitals.")
parser.add_argument("--label", help="A free text label.")
parser.add_argument("--words", nargs="+", help="Some words.")
parser.add_argument("--extra", type=argparse.FileType("r"), nargs="*", help="More files.")
parser.add_argument("-o", "--output", type=argparse.FileType("w"), help="Where to write.")
style = parser.add_argument_group("style", "How the answer looks.")
style.add_argument("--indent", type=int, choices=[0, 2, 4], default=2)
formats = parser.add_mutually_exclusive_group()
formats.add_argument("--json", action="store_true", help="Answer as JSON.")
formats.add_argument("--csv", action="store_true", help="Answer as CSV.")

args = parser.parse_args()
answer = {
    "data": args.data.read(),
    "times": args.times,
    "ratio": args.ratio,
    "color": args.color,
    "shout": args.shout,
    "label": args.label,
    "words": args.words,
    "extra": [f.read() for f in args.extra or []],
    "indent": args.indent,
    "json": args.json,
    "csv": args.csv,
}
print(json.dumps(answer))
if args.output:
    args.output.write(json.dumps(answer))
