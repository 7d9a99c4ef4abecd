# jobferry job wrapper (POSIX sh, dash-compatible); used by the Docker and Slurm runners
# (local jobs have the job host, jobhost.py, which writes the same files).
#
# Usage: sh wrapper.sh WORKDIR STDOUT STDERR RESULT LOGCAP -- ARGV...
#
# Runs ARGV in WORKDIR with stdin from /dev/null and stdout/stderr to the given
# files, each capped at LOGCAP bytes (0: no cap; see "Log caps" below). ARGV goes to
# `exec` as separate words, never through eval or sh -c, and
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
#
# Log caps (jobs.max_log_mb). Beyond LOGCAP bytes a log keeps its first half and its
# last half with one marker line between them that says exactly how many bytes were
# dropped; meanwhile the disk holds at most about 1.125 x LOGCAP per log. Why so:
# - A filter in the pipe, not a watcher of the file: a watcher wakes up now and then
#   (a `yes` writes GBs between two looks), cannot count exactly what it cut from a
#   file that is being written, and costs a fork per look. A pipe bounds the disk at
#   every write and counts exactly.
# - Standard tools, no python3 (images may lack it; its start-up alone costs 10-20
#   ms a job): per stream, one process takes the head as it comes, so a running job's
#   log can be followed: busybox `dd iflag=count_bytes` where there is a busybox (it
#   stops exactly at LOGCAP/2 bytes), else GNU dd (its count_bytes counts a short read
#   as a block: it stops at LOGCAP/2 bytes or so many reads, and the rest of the head
#   is taken later). busybox `head -c` reads ahead and GNU `head -c` buffers its
#   output, so neither. A GNU dd head that stopped short of its limit met the log's
#   end (what it says on stderr tells, read with builtins): that ends the filter.
#   Else one `dd iflag=fullblock` reads the first chunk after the head; "0+0 records
#   in" ends the filter too. So a job with small output pays one short-lived dd per
#   stream with GNU dd, two with busybox, and a few forks of this shell (see the
#   README's "Disk" section).
# - Only a log that outgrows the cap pays more: the overflow goes through a ring of
#   chunk files (one dd per chunk of about LOGCAP/16); at the end the last LOGCAP/2
#   bytes are appended after the marker, and the chunks are removed.
# - The job's exit status is its own: it comes out of the pipeline through a
#   command substitution (POSIX sh has no pipefail). The filters ignore SIGTERM, so
#   a cancel or walltime ends the job, the filters drain and finish the log, and
#   the result is written as before. SIGKILL (a job that outlives the grace time)
#   kills the filters too: the log then keeps its head, and chunk files may remain.
# - On a full disk a filter drains its pipe (the job is not killed by SIGPIPE); the
#   result then says disk_full=1 as always, and the count may be short.
stage() {
    python3 - "$@" <<'JOBFERRY_STAGE_PY'
@STAGE_PY@
JOBFERRY_STAGE_PY
}
# cap_log FILE CAP: copy stdin to FILE; beyond CAP bytes keep the head and the tail.
cap_log() {
    trap '' TERM
    exec 5<&0 >/dev/null
    f=$1 h=$(($2 / 2)) b=65536
    t=$(($2 - h))
    while [ $((b * 16)) -gt "$2" ] && [ "$b" -gt 1 ]; do b=$((b / 2)); done
    c=$((t / b / 8)) # a chunk: c blocks of b bytes, about t/8
    [ "$c" -gt 0 ] || c=1
    # The head, written as it comes. busybox dd iflag=count_bytes stops exactly at h
    # bytes; GNU dd (whose count_bytes counts a short read as a block) stops at h
    # bytes or h/4096 reads, whichever comes first: the rest of the head is then
    # taken below, once the log is known to be longer. A GNU dd that stopped short of
    # its q reads met the log's end (nearly every job): then the log is complete and
    # this filter is done, one dd in all. What it says is parsed with builtins only;
    # if it cannot be read, the path below decides, as before. (busybox dd, e.g.
    # Debian's 1.35, may not print a byte count, so its head is always followed by
    # the check below: two dd per stream, as before.)
    if [ -n "$bb" ]; then
        "$bb" dd bs=65536 count="$h" iflag=count_bytes 2>/dev/null >"$f"
    else
        q=$((h / 4096 + 1)) # it stops after q reads: fewer means its end of file
        n=$(dd bs=4096 count=$q 2>&1 >"$f") && n=${n%%[!0-9+]*} && # "F+P records in"
            [ "${n%+*}" -ge 0 ] 2>/dev/null && [ "${n#*+}" -ge 0 ] 2>/dev/null &&
            [ $((${n%+*} + ${n#*+})) -lt "$q" ] && exit 0
    fi
    # The first chunk after the head: a log may still end right there ("0+0 records").
    dd bs=$b count=$c iflag=fullblock 2>&1 >>"$f" | {
        read -r n _
        case $n in *[!0-9+]* | '') exec cat >/dev/null <&5 ;; 0+0) exit 0 ;; esac
        [ "${n%%+*}" = "$c" ] || exit 0 # ended within it: at most h + t bytes, all kept
        # Longer. Make the log its first h bytes exactly, the overflow the first of a
        # ring of k+1 chunk files (k*c*b >= t), and read on chunk by chunk.
        s=$(wc -c <"$f") k=$(((t / b + c - 1) / c)) i=0
        if [ "$s" -le "$h" ]; then
            head -c $((h - s)) <&5 >>"$f" && : >"$f.0" || exec cat >/dev/null <&5
        else
            tail -c +$((h + 1)) "$f" >"$f.0" &&
                dd if=/dev/null of="$f" bs=1 seek="$h" 2>/dev/null || exec cat >/dev/null <&5
        fi
        r=$(wc -c <"$f.0")
        while i=$((i + 1)) &&
            dd bs=$b count=$c iflag=fullblock of="$f.$((i % (k + 1)))" 2>"$f.n" <&5 &&
            read -r n _ <"$f.n" && [ "${n%%+*}" = "$c" ]; do
            r=$((r + c * b))
        done
        case $n in *[!0-9+]* | '' | "$c"+*) cat >/dev/null <&5 ;; esac # a failed dd: drain
        p=$(wc -c <"$f.$((i % (k + 1)))") || p=0
        d=$((r + p - t)) # r + p bytes after the head, t kept
        set --
        j=$((i - k))
        [ "$j" -ge 0 ] || j=0
        while [ "$j" -le "$i" ]; do
            set -- "$@" "$f.$((j % (k + 1)))"
            j=$((j + 1))
        done
        if [ "$d" -gt 0 ]; then
            printf '\n[jobferry: %s bytes dropped here; this log keeps its first %s and last %s bytes (jobs.max_log_mb)]\n' \
                "$d" "$h" "$t" >>"$f"
            cat -- "$@" | tail -c "$t" >>"$f"
        else
            cat -- "$@" >>"$f"
        fi
        rm -f -- "$@" "$f.n" "$f".[0-9]*
    }
}
trap : TERM
w=$1 o=$2 e=$3 r=$4 cap=${5:-0}
shift 5
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
elif ! cd -- "$w" 2>/dev/null; then
    c=127 m="reason=cannot change to working directory $w"
elif [ "$cap" -gt 0 ]; then
    bb= # a busybox to take the head with (exact and unbuffered), if there is one
    for x in /bin/busybox /usr/bin/busybox; do [ -x "$x" ] && bb=$x && break; done
    # The job's status on fd 4 (the substitution), its stdout on fd 3 (a pipe to one
    # filter), its stderr to the other filter; see "Log caps" above.
    c=$(
        trap '' TERM
        { { {
            (
                trap - TERM
                if [ -n "${JOBFERRY_MEMORY_KB:-}" ]; then ulimit -v "$JOBFERRY_MEMORY_KB"; fi
                exec "$@"
            ) </dev/null 2>&1 >&3 3>&- 4>&-
            echo $? >&4
        } | cap_log "$e" "$cap" 3>&- 4>&-; } 3>&1 | cap_log "$o" "$cap" 4>&-; } 4>&1
    )
    c=${c:-143}
else
    (
        if [ -n "${JOBFERRY_MEMORY_KB:-}" ]; then ulimit -v "$JOBFERRY_MEMORY_KB"; fi
        exec "$@"
    ) </dev/null >"$o" 2>"$e"
    c=$?
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
