"""Where a daemon's CPU goes, by phase of a job's life: py-spy samples, attributed by a table.

``Sampler`` runs ``py-spy record --format raw --nonblocking`` on the daemon's
pid (all threads, no children) while a run of jobs goes through it. Each
sample is a stack (outermost frame first) and a count; ``attribute`` gives it
to a phase:

1. **idle**: py-spy cannot tell on-CPU from blocked threads on this machine
   (its idle detection needs the OS thread state, which it does not get here),
   so a sample whose innermost frame's source line is a known blocking call
   (``IDLE_LINE``: a queue or lock wait, ``epoll``, a condition, a pipe read
   waiting for ``exec``) is dropped as idle. The source line is read from the
   daemon's tree, the standard library or site-packages (the same interpreter).
2. Otherwise the first phase of ``PHASES``, **in table order**, with a rule
   that matches *any* frame of the stack. Rules match a frame's file by prefix
   (``jobferry/daemon/scheduler.py``, ``jobferry/api/``, ``tornado/``) and,
   optionally, its function by a regular expression, so they keep working when
   code moves within a module or new functions appear. The last phase, the
   event loop and thread hops, takes only samples with no jobferry frame but
   the carriers (``CARRIERS``: the CLI's main, ``Core.call``, ...). Specific phases come
   first: the end's store writes are "end", not "store writes"; the HTTP
   handler that encloses a submission only takes what no inner rule claims.
3. Samples no rule matches are "other"; ``Breakdown.unmatched`` keeps their
   innermost jobferry frame (or innermost frame) so the table can be extended.

Shares of the on-CPU samples are scaled to the daemon's measured CPU (psutil,
user+sys) over the same window: ms of daemon CPU per job and phase.
"""

from __future__ import annotations

import contextlib
import linecache
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.common.report import BenchError, log

#: (phase, [(file prefix, function regex or "")]), in priority order (see the module doc).
PHASES: list[tuple[str, list[tuple[str, str]]]] = [
    (
        "output scan",
        [
            ("jobferry/services/endings.py", r"scan_outputs"),
            ("jobferry/", r"(?i)scan_outputs|output_files|sha256|digest"),
        ],
    ),
    (
        "status polls",
        [
            ("jobferry/api/wooey/jobs.py", r"JobStatusHandler"),
            ("jobferry/services/jobs.py", r"\.status$|\._view$|\.get$"),
            ("jobferry/store/records.py", r"job_status_row"),
        ],
    ),
    (
        "end",
        [
            ("jobferry/daemon/endings.py", r"record_end|_log_failure"),
            ("jobferry/services/execution.py", r"finish|collect_end|record_end|ended"),
            ("jobferry/services/endings.py", ""),
            ("jobferry/store/transitions.py", r"finish"),
            ("jobferry/runners/local.py", r"_conclude|cleanup"),
            ("jobferry/runners/wrapper.py", r"read_result"),
            ("jobferry/runners/proctree.py", r"peak_rss|_vm_hwm"),
            ("jobferry/services/telemetry.py", r"job_ended"),
        ],
    ),
    (
        "following",
        [
            # Not the call that records an end and then claims the next job: that
            # claim is the claim's (``daemon.claims``), its end the end's.
            ("jobferry/daemon/endings.py", r"^(?!_record_and_run$)"),
            ("jobferry/daemon/scheduler.py", r"_follow|watch"),
            ("jobferry/runners/local.py", r"wait|on_exit|_sample|poll|_pidfd|_alive|_process"),
            ("jobferry/runners/proctree.py", r"wait|descendant|_children"),
        ],
    ),
    (
        "spawn",
        [
            ("jobferry/runners/local.py", r"submit|find|_spawn|spawn"),
            ("jobferry/runners/hostclient.py", ""),
            ("jobferry/runners/wrapper.py", ""),
            ("jobferry/runners/proctree.py", r"start_ticks"),
            ("jobferry/daemon/scheduler.py", r"_begin|_spawn|_record|_launch|spawn"),
            ("jobferry/daemon/claims.py", r"spawn|record"),
            ("jobferry/daemon/dispatch.py", r"\.start$|spawn"),
            ("jobferry/services/execution.py", r"record_handle|spawn"),
        ],
    ),
    (
        "claim",
        [
            ("jobferry/daemon/scheduler.py", ""),
            ("jobferry/daemon/claims.py", ""),
            ("jobferry/daemon/dispatch.py", ""),
            ("jobferry/daemon/resources.py", ""),
            ("jobferry/services/execution.py", ""),
            ("jobferry/store/transitions.py", r"claim|queued|running_per"),
            ("jobferry/store/fair_claim.py", ""),
            ("jobferry/store/notify.py", ""),
            ("jobferry/staging/paths.py", ""),
            ("jobferry/services/telemetry.py", r"job_started"),
        ],
    ),
    (
        "validation",
        [
            ("jobferry/argspec/", ""),
            ("jobferry/services/submission.py", ""),
            ("jobferry/services/routing.py", ""),
            ("jobferry/services/tool_inputs.py", ""),
            ("jobferry/services/scripts.py", ""),
            ("jobferry/services/jobs.py", r"_place|_job_row|check"),
            ("jobferry/services/disk.py", ""),
        ],
    ),
    (
        "store writes",
        [
            ("jobferry/store/", ""),
            ("jobferry/services/jobs.py", ""),
        ],
    ),
    (
        "HTTP parse and auth",
        [
            ("jobferry/api/", ""),
            ("jobferry/daemon/connections.py", ""),
            ("jobferry/services/auth.py", ""),
            ("jobferry/services/ratelimit.py", ""),
            ("jobferry/staging/forms.py", ""),
            ("jobferry/staging/json_body.py", ""),
            ("jobferry/services/telemetry.py", r"http_request"),
            ("tornado/http1connection.py", ""),
            ("tornado/httputil.py", ""),
            ("tornado/httpserver.py", ""),
            ("tornado/web.py", ""),
            ("tornado/routing.py", ""),
            ("tornado/iostream.py", ""),
            ("tornado/tcpserver.py", ""),
        ],
    ),
    (
        "housekeeping",
        [
            ("jobferry/daemon/heartbeat.py", ""),
            ("jobferry/daemon/retention.py", ""),
            ("jobferry/daemon/supervisor.py", ""),
            ("jobferry/services/nodes.py", ""),
            ("jobferry/services/retention.py", ""),
            ("jobferry/services/health.py", ""),
            ("jobferry/services/metrics.py", ""),
        ],
    ),
    (
        "event loop, thread hops",
        [
            ("asyncio/", ""),
            ("concurrent/futures/", ""),
            ("threading.py", ""),
            ("selectors.py", ""),
            ("tornado/ioloop.py", ""),
            ("tornado/gen.py", ""),
            ("jobferry/services/core.py", r"call"),
            ("jobferry/daemon/logcontext.py", ""),
        ],
    ),
]
OTHER = "other"
#: The phases in report order (the table's, then "other").
PHASE_NAMES = [name for name, _ in PHASES] + [OTHER]

#: The innermost frame's source line of a thread that is blocked, not on the CPU.
IDLE_LINE = re.compile(
    r"\.get\(block=True\)"  # a thread pool worker waiting for work
    r"|_selector\.(poll|select)\("  # the event loop in epoll
    r"|\.acquire\("  # a lock or a condition
    r"|^\s*with\s+[\w.]*(lock|leader|mutex|cond|guard)\w*\s*:"  # waiting to take a lock
    r"|\.wait\(|\bwait(pid|4)\((?!.*WNOHANG)|\bselect\.select\(|\.poll\(\)"
    r"|os\.read\(errpipe_read|\btime\.sleep\(|_wait_for_tstate_lock\("
)
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*):(?P<line>\d+)\)$")


@dataclass(frozen=True)
class Frame:
    func: str
    file: str
    line: int


def parse_frame(text: str) -> Frame:
    match = _FRAME.match(text)
    if match is None:
        return Frame(text, "", 0)
    return Frame(match["func"], match["file"], int(match["line"]))


def read_raw(path: Path) -> list[tuple[list[Frame], int]]:
    """py-spy's raw (collapsed) output: one ``frame;frame;... count`` line per stack."""
    stacks: list[tuple[list[Frame], int]] = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        stacks.append(([parse_frame(f) for f in stack.split(";")], int(count)))
    return stacks


class SourceLines:
    """The source line of a frame, from the daemon's tree, the stdlib or site-packages."""

    def __init__(self, tree: Path) -> None:
        paths = sysconfig.get_paths()
        roots = [tree, Path(paths["stdlib"]), Path(paths["purelib"]), Path(paths["platlib"])]
        roots += [Path(p) for p in sys.path if p and Path(p).is_dir()]
        self.roots = list(dict.fromkeys(roots))
        self._cache: dict[tuple[str, int], str] = {}

    def line(self, frame: Frame) -> str:
        key = (frame.file, frame.line)
        if key not in self._cache:
            text = ""
            if frame.file.startswith("<frozen "):
                self._cache[key] = text
                return text
            for root in self.roots:
                candidate = Path(frame.file) if frame.file.startswith("/") else root / frame.file
                if candidate.is_file():
                    text = linecache.getline(str(candidate), frame.line)
                    break
            self._cache[key] = text
        return self._cache[key]


@dataclass
class Breakdown:
    """Samples per phase, the idle ones dropped, and what no rule claimed."""

    samples: Counter[str] = field(default_factory=Counter)
    idle: int = 0
    idle_lines: Counter[str] = field(default_factory=Counter)
    unmatched: Counter[str] = field(default_factory=Counter)
    #: Per phase: "innermost jobferry frame > innermost frame" of its samples.
    tops: dict[str, Counter[str]] = field(default_factory=dict)

    @property
    def on_cpu(self) -> int:
        return sum(self.samples.values())

    def shares(self) -> dict[str, float]:
        total = self.on_cpu or 1
        return {name: self.samples.get(name, 0) / total for name in PHASE_NAMES}

    def per_job_ms(self, cpu_per_job_ms: float) -> dict[str, float]:
        return {name: share * cpu_per_job_ms for name, share in self.shares().items()}


def _rule_matches(frame: Frame, prefix: str, func: str) -> bool:
    if not frame.file.startswith(prefix) and f"/{prefix}" not in frame.file:
        return False
    return not func or re.search(func, frame.func) is not None


#: jobferry frames that only carry the event loop and thread hops (no phase of their own).
CARRIERS = (
    "jobferry/cli/",
    "jobferry/daemon/server.py",
    "jobferry/services/core.py",
    "jobferry/daemon/logcontext.py",
)
LOOP_PHASE = "event loop, thread hops"


def phase_of(stack: list[Frame]) -> str:
    for name, rules in PHASES:
        if name == LOOP_PHASE and any(
            "jobferry/" in f.file and not f.file.startswith(CARRIERS) for f in stack
        ):
            return OTHER  # jobferry code that no rule above knows: say so, not "the loop"
        for prefix, func in rules:
            if any(_rule_matches(frame, prefix, func) for frame in stack):
                return name
    return OTHER


def _label(frame: Frame) -> str:
    return f"{frame.func} ({frame.file})"


def attribute(raw: Path, tree: Path) -> Breakdown:
    """Attribute every sample of py-spy's *raw* file (a daemon running *tree*'s code)."""
    lines = SourceLines(tree)
    out = Breakdown()
    for stack, count in read_raw(raw):
        if not stack:
            continue
        leaf = stack[-1]
        source = lines.line(leaf)
        if source and IDLE_LINE.search(source):
            out.idle += count
            out.idle_lines[f"{_label(leaf)}: {source.strip()}"] += count
            continue
        phase = phase_of(stack)
        out.samples[phase] += count
        ours = [f for f in stack if "jobferry/" in f.file]
        if phase == OTHER:
            out.unmatched[_label(ours[-1] if ours else leaf)] += count
        where = (
            _label(leaf) if not ours or ours[-1] is leaf else f"{ours[-1].func} > {_label(leaf)}"
        )
        out.tops.setdefault(phase, Counter())[where] += count
    return out


def py_spy() -> str:
    """The py-spy next to this interpreter (the ``bench`` extra), else on PATH."""
    here = Path(sys.executable).with_name("py-spy")
    found = str(here) if here.exists() else shutil.which("py-spy")
    if not found:
        raise BenchError("py-spy is not installed (pip install -e '.[bench]')")
    return found


class Sampler:
    """``py-spy record`` of one process into a raw file; stopped by its pid (SIGINT).

    With *gil*, only the thread holding the GIL is sampled (``--gil``)."""

    def __init__(self, pid: int, out: Path, rate_hz: int = 250, gil: bool = False) -> None:
        self.out = out
        self.err = out.with_suffix(".err")
        argv = [py_spy(), "record", "--format", "raw", "--nonblocking", "--rate", str(rate_hz)]
        argv += ["--output", str(out), "--pid", str(pid)] + (["--gil"] if gil else [])
        with open(self.err, "wb") as err:
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)

    def stop(self, timeout_s: float = 30.0) -> Path:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if not self.out.exists():
            raise BenchError(f"py-spy wrote nothing: {self.err.read_text(errors='replace')[-500:]}")
        return self.out


def breakdown_table(rows: list[tuple[str, Breakdown, float]], top: int = 8) -> str:
    """Phases (ms of daemon CPU per job) for each (label, breakdown, CPU ms per job)."""
    head = f"{'phase':<26}" + "".join(f"{label:>24}" for label, _, _ in rows)
    lines = [head, "-" * len(head)]
    for name in PHASE_NAMES:
        cells = ""
        for _, part, cpu in rows:
            share = part.shares()[name]
            cells += f"{share * cpu:>13.2f} ms {100 * share:>5.1f} %"
        lines.append(f"{name:<26}{cells}")
    lines.append(f"{'total (psutil)':<26}" + "".join(f"{cpu:>16.2f} ms/job" for _, _, cpu in rows))
    lines.append(
        f"{'samples on CPU / idle':<26}"
        + "".join(f"{f'{p.on_cpu} / {p.idle}':>24}" for _, p, _ in rows)
    )
    for label, part, _ in rows:
        if part.unmatched:
            lines.append(f"top unmatched ({label}):")
            total = part.on_cpu or 1
            for where, count in part.unmatched.most_common(top):
                lines.append(f"  {100 * count / total:5.1f} %  {where}")
    return "\n".join(lines)


def top_table(label: str, part: Breakdown, cpu_per_job_ms: float, top: int = 6) -> str:
    """The heaviest places of each phase: innermost jobferry frame > innermost frame."""
    total = part.on_cpu or 1
    lines = [f"Top places per phase ({label}; ms of daemon CPU per job, share of on-CPU samples):"]
    for name in PHASE_NAMES:
        counts = part.tops.get(name)
        if not counts:
            continue
        lines.append(f"  {name}:")
        for where, count in counts.most_common(top):
            share = count / total
            lines.append(
                f"    {share * cpu_per_job_ms:6.2f} ms {100 * share:5.1f} %  {where[:140]}"
            )
    return "\n".join(lines)


def log_idle(label: str, part: Breakdown, top: int = 5) -> None:
    """The blocking lines whose samples were dropped as idle (to check the filter)."""
    for where, count in part.idle_lines.most_common(top):
        log(f"  idle ({label}) {count:>6}  {where[:150]}")
