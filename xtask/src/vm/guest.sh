#!/bin/sh
# PID 1 of the test VM (`cargo xtask vm-test`): mounts what locktrace needs,
# runs the smoke checks with the release locktrace on the kernel this VM
# booted, writes one `vm-test: PASS|FAIL NAME` line per check to the serial
# console (the host reads them there), then powers the VM off. No init
# system: nothing else runs beside the checks, and the boot takes seconds.

export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8
DIR=/opt/locktrace
LT=$DIR/locktrace
FX=$DIR/fixtures
OUT=/tmp/vm-test
# Each check's own limit: nothing in a check waits for long, and a hung one
# is a failure, not a hung VM (the host has its own limit on the whole boot).
LIMIT=120

say() { echo "vm-test: $*" >/dev/console; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mkdir -p $OUT

say "kernel $(uname -r) $(uname -v)"

# One check: NAME, then the command (its stdout+stderr in $OUT/NAME, its exit
# status in $rc); the verdict is given by `verdict NAME CONDITION-TEXT`.
run_check() {
    name=$1
    shift
    timeout -s KILL $LIMIT "$@" >$OUT/$name 2>&1
    rc=$?
}

pass() {
    say "PASS $1"
    # Its findings' first lines and the summary, for the log.
    grep -E '^(WARNING|ERROR)|^locktrace: [0-9]+ events|single uprobes|group_dead' $OUT/$1 2>/dev/null |
        cut -c1-300 | sed -e 's/^/vm-test:   | /' >/dev/console
}
fail() {
    say "FAIL $1: $2"
    # What it printed, for the log (the host keeps the whole console).
    { head -n 5 $OUT/$1; echo ...; tail -n 40 $OUT/$1; } | sed -e 's/^/vm-test:   | /' >/dev/console
}

has() { grep -q -- "$2" $OUT/$1; }
count() { grep -c -- "$2" $OUT/$1; }

# 1. AB/BA inversion, symbolized (no frame pointers: .eh_frame unwinding).
run_check ab_ba $LT run -v -- $FX/ab_ba
if [ $rc -ne 0 ]; then fail ab_ba "locktrace exited $rc"
elif ! has ab_ba "lock-order inversion between 2 locks"; then fail ab_ba "no inversion reported"
elif ! has ab_ba "lock_ab+0x.*ab_ba.c:"; then fail ab_ba "no symbolized frame of lock_ab"
else pass ab_ba; fi

# Programs this kernel's verifier refuses fail every check alike: say so
# once, and stop.
if has ab_ba "cannot load program"; then
    for c in three_cycle trylock rwlock deadlock python_ab_ba run_status attach_detach; do
        say "FAIL $c: not run, the programs did not load"
    done
    say done
    sync
    echo o >/proc/sysrq-trigger
    sleep 30
fi

# The kernel's multi-uprobe links (6.6+) or single uprobes, said once on -v.
singles=$(count ab_ba "single uprobes")
if [ -e /sys/kernel/btf/vmlinux ] && grep -q bpf_uprobe_multi_link_attach /proc/kallsyms; then
    if [ "$singles" -eq 0 ]; then pass multi_uprobe_links; else fail ab_ba "this kernel has multi-uprobe links, but: single uprobes"; fi
elif [ "$singles" -eq 1 ]; then pass single_uprobe_fallback
else fail ab_ba "expected one -v line saying why single uprobes, found $singles"; fi

# 2. A cycle of three locks.
run_check three_cycle $LT run -- $FX/three_cycle
if [ $rc -ne 0 ]; then fail three_cycle "locktrace exited $rc"
elif ! has three_cycle "lock-order inversion between 3 locks"; then fail three_cycle "no 3-lock cycle reported"
else pass three_cycle; fi

# 3. The reverse order only ever tried with trylock: no finding.
run_check trylock $LT run -- $FX/trylock_reverse
if [ $rc -ne 0 ]; then fail trylock "locktrace exited $rc"
elif has trylock "WARNING\|ERROR"; then fail trylock "a finding for a trylock-only reverse order"
elif ! has trylock " 0 cycles"; then fail trylock "the summary does not say 0 cycles"
elif ! has trylock "acquisitions=[1-9]"; then fail trylock "no acquisition seen (were the probes there?)"
else pass trylock; fi

# 4. AB/BA between two rwlocks taken for writing.
run_check rwlock $LT run -- $FX/rwlock_ww
if [ $rc -ne 0 ]; then fail rwlock "locktrace exited $rc"
elif ! has rwlock "lock-order inversion between 2 locks"; then fail rwlock "no inversion reported"
elif ! has rwlock "rwlock_a (rwlock_write "; then fail rwlock "the locks are not named as rwlocks"
else pass rwlock; fi

# 5. A real deadlock: reported while it lasts, the program killed by its
#    alarm after 4 s and `run` exiting with its status (128 + SIGALRM).
run_check deadlock $LT run -- $FX/deadlock 4
if [ $rc -ne 142 ]; then fail deadlock "locktrace exited $rc, not the program's 142 (SIGALRM)"
elif ! has deadlock "ERROR: deadlock: 2 threads of deadlock"; then fail deadlock "no deadlock reported"
elif ! has deadlock "waits for mutex_b"; then fail deadlock "the waits are not named"
else pass deadlock; fi

# 6. Python AB/BA, with Python frames from Debian's interpreter.
run_check python_ab_ba $LT run -- /usr/bin/python3 $DIR/frames_ab_ba.py Lock
if [ $rc -ne 0 ]; then fail python_ab_ba "locktrace exited $rc"
elif ! has python_ab_ba "lock-order inversion between 2 locks in python3"; then fail python_ab_ba "no inversion reported"
elif ! has python_ab_ba "take_b_then_a .*frames_ab_ba.py:"; then fail python_ab_ba "no Python frame"
else pass python_ab_ba; fi

# 7. `run` exits with its command's status.
run_check run_status $LT run -- /bin/sh -c 'exit 7'
if [ $rc -ne 7 ]; then fail run_status "locktrace exited $rc, not 7"; else pass run_status; fi

# 8. Attach and detach host-wide: SIGTERM stops it with its summary, and no
#    probe is left behind.
timeout -s KILL $LIMIT $LT watch -v >$OUT/attach_detach 2>&1 &
tracer=$!
armed=
for _ in $(seq 1 600); do
    if grep -q "armed" $OUT/attach_detach; then armed=1; break; fi
    kill -0 $tracer 2>/dev/null || break
    sleep 0.1
done
$FX/ab_ba >/dev/null 2>&1
sleep 0.5
# The clock is read before the signal: no process of the guest runs while
# the single uprobes detach (under TCG, a 6.1 guest once soft-locked in a
# `date` started at that moment: see the session note of 2026-12-07).
started=$(date +%s)
kill -TERM $tracer 2>/dev/null
wait $tracer
rc=$?
took=$(( $(date +%s) - started ))
left=$(grep -c . /sys/kernel/tracing/uprobe_events)
if [ -z "$armed" ]; then fail attach_detach "never armed"
elif [ $rc -ne 0 ]; then fail attach_detach "locktrace exited $rc after SIGTERM"
elif ! has attach_detach "lock-order inversion between 2 locks in ab_ba"; then fail attach_detach "the host-wide tracer missed the inversion"
elif ! has attach_detach "^locktrace: .* events"; then fail attach_detach "no summary"
elif [ "$left" -ne 0 ]; then fail attach_detach "$left uprobe_events left"
elif grep -qx locktrace /proc/[0-9]*/comm 2>/dev/null; then fail attach_detach "a locktrace process is left"
else pass attach_detach; fi
say "attach_detach: stopped ${took}s after SIGTERM, uprobe_events lines left: $left"

say done
sync
echo o >/proc/sysrq-trigger
sleep 30
