# jobferry job wrapper (POSIX sh, dash-compatible); used by jobferry.runners.local.
#
# Usage: sh wrapper.sh WORKDIR STDOUT STDERR RESULT -- ARGV...
#
# Runs ARGV in WORKDIR with stdin from /dev/null and stdout/stderr to the given
# files. ARGV goes to `exec` as separate words, never through eval or sh -c, and
# `exec` only runs programs (never builtins), so hostile strings stay literal.
# When it ends, RESULT is written as key=value lines: exit_code=N, an optional
# reason=..., and two cpu=<user> <sys> lines from `times` (this shell, then its
# children). RESULT's mtime is the finish time. It is written in place, without a
# rename (an external `mv` would cost a fork+exec per job): readers only look at it
# once this wrapper has exited, and a result without exit_code counts as none.
# The wrapper exits with the job's exit code. SIGTERM to the process group does not
# stop the wrapper before the job: the trap (a handler, so the job gets the default
# action back on exec) is only run once the job has ended, and the result still
# gets written.
trap : TERM
w=$1 o=$2 e=$3 r=$4
shift 4
# First of all, say who we are: a daemon that dies before recording our handle
# finds us through this file instead of starting the job a second time.
echo $$ >"$r.pid"
if [ "$1" = -- ]; then shift; fi
m=
if cd -- "$w" 2>/dev/null; then
    (exec "$@") </dev/null >"$o" 2>"$e"
    c=$?
else
    c=127 m="reason=cannot change to working directory $w"
fi
times >"$r"
{ read -r s; read -r k; } <"$r"
printf 'exit_code=%s\ncpu=%s\ncpu=%s\n%s\n' "$c" "$s" "$k" "$m" >"$r"
exit "$c"
