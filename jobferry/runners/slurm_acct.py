"""Slurm accounting: a finished job's peak memory (``sacct`` MaxRSS).

Only where accounting is on: without it ``sacct`` answers "accounting storage is
disabled", which the Slurm runner notes once and then stops asking (the job's
peak memory stays unknown: the wrapper, a POSIX shell, cannot measure it).
MaxRSS is reported per step (``.batch``, ``.0`` ...); the job's is the largest.
"""

from __future__ import annotations

#: sacct's words when accounting is off (it then never has anything).
ACCOUNTING_DISABLED = "accounting storage is disabled"
#: sacct's arguments for one job's steps and their MaxRSS.
MAX_RSS_ARGS = ("-n", "-P", "-o", "JobID,MaxRSS", "-j")

_KIB_PER_UNIT = {"K": 1, "M": 1 << 10, "G": 1 << 20, "T": 1 << 30, "P": 1 << 40}


def parse_max_rss_kb(output: str) -> int | None:
    """The largest MaxRSS (KiB) in ``sacct -n -P -o JobID,MaxRSS`` output; None if none."""
    best: int | None = None
    for line in output.splitlines():
        _, _, value = line.partition("|")
        found = _kib(value.strip())
        if found and (best is None or found > best):
            best = found
    return best


def _kib(text: str) -> int | None:
    """``10452K``, ``1.5G``, ``0`` (bytes when there is no unit) as KiB."""
    if not text:
        return None
    unit = text[-1].upper()
    try:
        if unit in _KIB_PER_UNIT:
            return int(float(text[:-1]) * _KIB_PER_UNIT[unit])
        return int(float(text)) // 1024
    except ValueError:
        return None
