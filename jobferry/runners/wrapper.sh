# jobferry job wrapper (POSIX sh, dash-compatible); used by jobferry.runners.local.
#
# Usage: sh wrapper.sh WORKDIR STDOUT STDERR RESULT -- ARGV...
#
# Runs ARGV in WORKDIR with stdin from /dev/null and stdout/stderr to the given
# files. ARGV goes to `exec` as separate words, never through eval or sh -c, and
# `exec` only runs programs (never builtins), so hostile strings stay literal.
# When it ends, RESULT is written as key=value lines: exit_code=N, an optional
# reason=..., two cpu=<user> <sys> lines from `times` (this shell, then its
# children), and disk_full=1 if the disk was full at first (see below). RESULT's
# mtime is the finish time. It is written in place, without a
# rename (an external `mv` would cost a fork+exec per job): readers only look at it
# once this wrapper has exited, and a result without exit_code counts as none.
# The wrapper exits with the job's exit code. SIGTERM to the process group does not
# stop the wrapper before the job: the trap (a handler, so the job gets the default
# action back on exec) is only run once the job has ended, and the result still
# gets written.
#
# JOBFERRY_MEMORY_KB, when set, caps the job's address space (ulimit -v) where no
# cgroup limits it (local processes, Slurm without cgroup plugins).
#
# With JOBFERRY_STAGING=remote the execution host does not share the daemon's
# disk: the four paths lie in a scratch directory (created here), and python3
# runs jobferry's stager (stage.py, pasted in below by jobferry.runners.wrapper)
# to fetch the inputs first and to post work/*, stdout, stderr and the result
# back and report the end afterwards. A failed stage-out exits 75 (EX_TEMPFAIL).
stage() {
    python3 - "$@" <<'JOBFERRY_STAGE_PY'
@STAGE_PY@
JOBFERRY_STAGE_PY
}
trap : TERM
w=$1 o=$2 e=$3 r=$4
shift 4
m= remote=
if [ "${JOBFERRY_STAGING:-}" = remote ]; then
    remote=${r%/*}
    mkdir -p -- "$w" || exit 73
    t0=$(date +%s)
fi
# First of all, say who we are: a daemon that dies before recording our handle
# finds us through this file instead of starting the job a second time.
echo $$ >"$r.pid"
if [ "$1" = -- ]; then shift; fi
if [ -n "$remote" ] && ! stage in "$remote" 2>>"$e.stage"; then
    c=126 m="reason=staging the inputs in failed: $(tail -n 1 "$e.stage" 2>/dev/null)"
elif cd -- "$w" 2>/dev/null; then
    (
        if [ -n "${JOBFERRY_MEMORY_KB:-}" ]; then ulimit -v "$JOBFERRY_MEMORY_KB"; fi
        exec "$@"
    ) </dev/null >"$o" 2>"$e"
    c=$?
else
    c=127 m="reason=cannot change to working directory $w"
fi
# The result is the job's only lasting record of its exit code: on a full disk the
# wrapper keeps trying (each second, while its directory exists and is writable:
# not on a permission error or a read-only filesystem) rather than exit without it,
# and says so in the file (disk_full=1: the job's outputs may be cut short). Until
# then the job counts as running, also for a restarted daemon.
f=
# `times` in braces: a failed redirection of a special builtin would end the shell.
until { times; } 2>/dev/null >"$r" && { read -r s && read -r k; } <"$r" &&
    printf 'exit_code=%s\ncpu=%s\ncpu=%s\n%s%s\n' "$c" "$s" "$k" "$f" "$m" >"$r" 2>/dev/null; do
    [ -d "${r%/*}" ] && [ -w "${r%/*}" ] || break
    f='disk_full=1
'
    sleep 1
done
if [ -n "$remote" ]; then
    cd / || :
    if stage out "$remote" "$c" "$t0" 2>>"$e.out"; then
        rm -rf -- "$remote"
    else
        cat -- "$e.out" >&2
        exit 75
    fi
fi
exit "$c"
