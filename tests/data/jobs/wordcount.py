"""Count words of an input file; write the count to an output file."""

import argparse

parser = argparse.ArgumentParser(description="Count the words of a file.")
parser.add_argument("-i", "--infile", type=argparse.FileType("r"), required=True, help="input")
parser.add_argument("-o", "--out", type=argparse.FileType("w"), default="count.txt", help="output")
parser.add_argument("--upper", action="store_true", help="also write an upper-cased copy")
parser.add_argument("--repeat", type=int, default=1, choices=[1, 2, 3])
args = parser.parse_args()
text = args.infile.read()
args.out.write(f"{len(text.split()) * args.repeat}\n")
if args.upper:
    with open("upper.txt", "w") as handle:
        handle.write(text.upper())
print(f"counted {len(text.split())} words")
