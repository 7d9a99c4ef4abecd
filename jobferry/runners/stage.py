# jobferry's remote stager: run by the job wrapper with python3 on an execution host
# that shares no disk with the daemon (``staging: remote``). Standard library only,
# so any python3 >= 3.6 on a compute node or in an image will do; never imported
# by the daemon.
#
#   python3 - in  REMOTE_DIR            fetch the job's inputs, report "running"
#   python3 - out REMOTE_DIR EXIT_CODE STARTED_AT
#                                       post work/*, stdout, stderr, result;
#                                       report "finished" with exit code + metrics
#
# Everything travels over the job_files API (GET/POST /api/jobs/{id}/files) and
# the state callback (POST /api/jobs/{id}/state), authenticated by the job's key
# (JOBFERRY_URL, JOBFERRY_JOB_ID, JOBFERRY_JOB_KEY, JOBFERRY_ATTEMPT,
# JOBFERRY_STAGE_IN: a JSON list of paths relative to the job's directory).
# Transfers are retried with exponential back-off on connection errors and 5xx
# answers; a 4xx answer is final. Exit status: 0 done, 1 failed (message on stderr).
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

ATTEMPTS = 6
CHUNK = 1 << 20


def log(message):
    sys.stderr.write(f"jobferry-stage: {message}\n")
    sys.stderr.flush()


class Final(Exception):
    """An answer that retrying cannot change (4xx)."""


def retry(what, action):
    delay = 0.5
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return action()
        except urllib.error.HTTPError as exc:
            body = exc.read()[:300].decode("utf-8", "replace")
            if exc.code < 500 and exc.code not in (408, 429):
                raise Final(f"{what}: HTTP {exc.code} {body}") from None
            problem = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            problem = str(exc)
        if attempt == ATTEMPTS:
            raise Final(f"{what}: gave up after {attempt} attempts: {problem}")
        log(f"{what} failed ({problem}); retrying in {delay:.1f}s")
        time.sleep(delay)
        delay = min(delay * 2, 10.0)


def url(suffix, **query):
    base = os.environ["JOBFERRY_URL"].rstrip("/")
    job = urllib.parse.quote(os.environ["JOBFERRY_JOB_ID"], safe="")
    query["job_key"] = os.environ["JOBFERRY_JOB_KEY"]
    return f"{base}/api/jobs/{job}/{suffix}?{urllib.parse.urlencode(query)}"


def fetch(rel, target):
    def action():
        with urllib.request.urlopen(url("files", path=rel), timeout=60) as answer:
            expected = answer.headers.get("Content-Length")
            part = target + ".part"
            size = 0
            with open(part, "wb") as out:
                while True:
                    chunk = answer.read(CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    size += len(chunk)
            if expected is not None and int(expected) != size:
                raise OSError(f"truncated: {size} of {expected} bytes")
            os.replace(part, target)

    os.makedirs(os.path.dirname(target), exist_ok=True)
    retry(f"fetching {rel}", action)


def post_file(rel, source):
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="upload"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def body():
        yield head
        with open(source, "rb") as f:
            while True:
                chunk = f.read(CHUNK)
                if not chunk:
                    break
                yield chunk
        yield tail

    def action():
        length = len(head) + os.path.getsize(source) + len(tail)
        request = urllib.request.Request(url("files", path=rel), data=body(), method="POST")
        request.add_header("Content-Type", f"multipart/form-data; boundary={boundary}")
        request.add_header("Content-Length", str(length))
        with urllib.request.urlopen(request, timeout=300) as answer:
            answer.read()

    retry(f"posting {rel}", action)


def report(state, **fields):
    fields.update(state=state, attempt=int(os.environ.get("JOBFERRY_ATTEMPT", "1")))
    data = json.dumps(fields).encode()

    def action():
        request = urllib.request.Request(url("state"), data=data, method="POST")
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=60) as answer:
            return json.loads(answer.read().decode() or "{}")

    return retry(f"reporting {state}", action)


def read_result(path):
    """exit code, reason and CPU times from the wrapper's result file."""
    exit_code, reason, user, system = None, None, 0.0, 0.0
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None, "no result file", None, None
    for line in lines:
        key, _, value = line.partition("=")
        if key == "exit_code":
            exit_code = int(value)
        elif key == "reason":
            reason = value
        elif key == "cpu":
            parts = [p.rstrip("s").partition("m") for p in value.split()]
            times = [int(m) * 60 + float(s) for m, _, s in parts]
            user, system = user + times[0], system + times[1]
    return exit_code, reason, user, system


def stage_in(remote):
    for rel in json.loads(os.environ.get("JOBFERRY_STAGE_IN") or "[]"):
        if rel.startswith("/") or ".." in rel.split("/"):
            raise Final(f"refusing to stage {rel!r}")
        fetch(rel, os.path.join(remote, rel))
    os.makedirs(os.path.join(remote, "work"), exist_ok=True)
    report("running")


def stage_out(remote, exit_code, started):
    work = os.path.join(remote, "work")
    for root, dirs, files in os.walk(work):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            post_file("work/" + os.path.relpath(path, work), path)
    for name in ("stdout", "stderr", "result"):
        path = os.path.join(remote, name)
        if os.path.isfile(path):
            post_file(name, path)
    code, reason, user, system = read_result(os.path.join(remote, "result"))
    metrics = {"wall_s": max(0.0, time.time() - started), "cpu_user_s": user, "cpu_sys_s": system}
    answer = report(
        "finished",
        exit_code=exit_code if code is None else code,
        reason=reason,
        metrics=metrics,
    )
    log(f"reported the end: {json.dumps(answer)}")


def main(argv):
    try:
        if argv[1] == "in":
            stage_in(argv[2])
        elif argv[1] == "out":
            stage_out(argv[2], int(argv[3]), float(argv[4]))
        else:
            raise Final(f"unknown mode {argv[1]!r}")
    except Final as exc:
        log(str(exc))
        return 1
    except Exception as exc:  # anything else: say what, fail the staging
        log(f"{type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
