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
# A host-wide `watch`'s: its single uprobes take minutes to attach and
# detach on the PREEMPT_RT kernel under emulation.
WATCH_LIMIT=300

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
check_ab_ba() {
    run_check ab_ba $LT run -v -- $FX/ab_ba
    if [ $rc -ne 0 ]; then fail ab_ba "locktrace exited $rc"
    elif ! has ab_ba "lock-order inversion between 2 locks"; then fail ab_ba "no inversion reported"
    elif ! has ab_ba "lock_ab+0x.*ab_ba.c:"; then fail ab_ba "no symbolized frame of lock_ab"
    else pass ab_ba; fi

    # Programs this kernel's verifier refuses fail every check alike: say
    # so once, and stop.
    if has ab_ba "cannot load program"; then
        for c in $CHECKS; do
            [ $c = ab_ba ] || say "FAIL $c: not run, the programs did not load"
        done
        finish
    fi

    # The kernel's multi-uprobe links (6.6+) or single uprobes, said once on -v.
    singles=$(count ab_ba "single uprobes")
    if [ -e /sys/kernel/btf/vmlinux ] && grep -q bpf_uprobe_multi_link_attach /proc/kallsyms; then
        if [ "$singles" -eq 0 ]; then pass multi_uprobe_links; else fail ab_ba "this kernel has multi-uprobe links, but: single uprobes"; fi
    elif [ "$singles" -eq 1 ]; then pass single_uprobe_fallback
    else fail ab_ba "expected one -v line saying why single uprobes, found $singles"; fi
}

# 2. A cycle of three locks.
check_three_cycle() {
    run_check three_cycle $LT run -- $FX/three_cycle
    if [ $rc -ne 0 ]; then fail three_cycle "locktrace exited $rc"
    elif ! has three_cycle "lock-order inversion between 3 locks"; then fail three_cycle "no 3-lock cycle reported"
    else pass three_cycle; fi
}

# 3. The reverse order only ever tried with trylock: no finding.
check_trylock() {
    run_check trylock $LT run -- $FX/trylock_reverse
    if [ $rc -ne 0 ]; then fail trylock "locktrace exited $rc"
    elif has trylock "WARNING\|ERROR"; then fail trylock "a finding for a trylock-only reverse order"
    elif ! has trylock " 0 cycles"; then fail trylock "the summary does not say 0 cycles"
    elif ! has trylock "acquisitions=[1-9]"; then fail trylock "no acquisition seen (were the probes there?)"
    else pass trylock; fi
}

# 4. AB/BA between two rwlocks taken for writing.
check_rwlock() {
    run_check rwlock $LT run -- $FX/rwlock_ww
    if [ $rc -ne 0 ]; then fail rwlock "locktrace exited $rc"
    elif ! has rwlock "lock-order inversion between 2 locks"; then fail rwlock "no inversion reported"
    elif ! has rwlock "rwlock_a (rwlock_write "; then fail rwlock "the locks are not named as rwlocks"
    else pass rwlock; fi
}

# 5. A real deadlock: reported while it lasts, the program killed by its
#    alarm after 4 s and `run` exiting with its status (128 + SIGALRM).
check_deadlock() {
    run_check deadlock $LT run -- $FX/deadlock 4
    if [ $rc -ne 142 ]; then fail deadlock "locktrace exited $rc, not the program's 142 (SIGALRM)"
    elif ! has deadlock "ERROR: deadlock: 2 threads of deadlock"; then fail deadlock "no deadlock reported"
    elif ! has deadlock "waits for mutex_b"; then fail deadlock "the waits are not named"
    else pass deadlock; fi
}

# 6. Python AB/BA, with Python frames from Debian's interpreter.
check_python_ab_ba() {
    run_check python_ab_ba $LT run -- /usr/bin/python3 $DIR/frames_ab_ba.py Lock
    if [ $rc -ne 0 ]; then fail python_ab_ba "locktrace exited $rc"
    elif ! has python_ab_ba "lock-order inversion between 2 locks in python3"; then fail python_ab_ba "no inversion reported"
    elif ! has python_ab_ba "take_b_then_a .*frames_ab_ba.py:"; then fail python_ab_ba "no Python frame"
    else pass python_ab_ba; fi
}

# 7. `run` exits with its command's status.
check_run_status() {
    run_check run_status $LT run -- /bin/sh -c 'exit 7'
    if [ $rc -ne 7 ]; then fail run_status "locktrace exited $rc, not 7"; else pass run_status; fi
}

# Starts `locktrace watch -v` host-wide into $OUT/$1 (its pid in $tracer)
# and waits until it says its probes are armed ($armed set then).
start_watch() {
    timeout -s KILL $WATCH_LIMIT $LT watch -v >$OUT/$1 2>&1 &
    tracer=$!
    armed=
    for _ in $(seq 1 1200); do
        if grep -q "armed" $OUT/$1; then armed=1; break; fi
        kill -0 $tracer 2>/dev/null || break
        sleep 0.1
    done
}

# Stops the tracer with SIGTERM: its exit status in $rc, the seconds it
# took in $took (for the log only), the uprobe_events lines left in $left.
stop_watch() {
    started=$(date +%s)
    kill -TERM $tracer 2>/dev/null
    wait $tracer
    rc=$?
    took=$(( $(date +%s) - started ))
    left=$(grep -c . /sys/kernel/tracing/uprobe_events)
}

# 8. Attach and detach host-wide: SIGTERM stops it with its summary, and no
#    probe is left behind.
check_attach_detach() {
    start_watch attach_detach
    $FX/ab_ba >/dev/null 2>&1
    sleep 0.5
    stop_watch
    if [ -z "$armed" ]; then fail attach_detach "never armed"
    elif [ $rc -ne 0 ]; then fail attach_detach "locktrace exited $rc after SIGTERM"
    elif ! has attach_detach "lock-order inversion between 2 locks in ab_ba"; then fail attach_detach "the host-wide tracer missed the inversion"
    elif ! has attach_detach "^locktrace: .* events"; then fail attach_detach "no summary"
    elif [ "$left" -ne 0 ]; then fail attach_detach "$left uprobe_events left"
    elif grep -qx locktrace /proc/[0-9]*/comm 2>/dev/null; then fail attach_detach "a locktrace process is left"
    else pass attach_detach; fi
    say "attach_detach: stopped ${took}s after SIGTERM, uprobe_events lines left: $left"
}

# Lines of $1 (0 when it does not exist).
lines() { cat $1 2>/dev/null | wc -l; }

# 9. Detach under load: while the host-wide tracer detaches after SIGTERM,
#    a program keeps hitting the probes (8 threads locking and unlocking)
#    and a shell keeps starting `date` (each start maps libc, where the
#    kernel puts the breakpoints of the probes it still has). The traced
#    program must live on untouched, the shell must keep starting
#    programs, and the kernel must report no stall (soft lockup, RCU stall,
#    hung task) from the check's start on.
check_detach_under_load() {
    name=detach_under_load
    dates=$OUT/$name.dates
    rm -f $dates
    dmesg -C
    start_watch $name
    $FX/busy_pairs 600 >/dev/null 2>&1 &
    busy=$!
    sh -c "while :; do date +%s >>$dates; done" &
    execs=$!
    # Until both run with the probes there: the traced program's locks
    # counted, some dates started.
    for _ in $(seq 1 300); do
        [ $(lines $dates) -ge 5 ] && break
        sleep 0.1
    done
    sleep 2
    before=$(lines $dates)
    stop_watch
    during=$(( $(lines $dates) - before ))
    # The shell keeps starting programs after the detach.
    after=$(lines $dates)
    for _ in $(seq 1 300); do
        [ $(lines $dates) -gt $after ] && break
        sleep 0.1
    done
    more=$(( $(lines $dates) - after ))
    kill -0 $busy 2>/dev/null && busy_alive=1 || busy_alive=
    kill $execs 2>/dev/null
    kill -TERM $busy 2>/dev/null
    wait $busy
    busy_rc=$?
    wait $execs
    stalls=$(dmesg | grep -E "soft lockup|rcu: INFO|blocked for more than|BUG:|WARNING:" | head -n 3)
    if [ -z "$armed" ]; then fail $name "never armed"
    elif [ $rc -ne 0 ]; then fail $name "locktrace exited $rc after SIGTERM"
    elif ! has $name "^locktrace: .* events"; then fail $name "no summary"
    elif ! has $name "acquisitions=[1-9]"; then fail $name "no acquisition seen (were the probes there?)"
    elif [ -z "$busy_alive" ]; then fail $name "the traced program did not outlive the detach"
    elif [ $busy_rc -ne 143 ]; then fail $name "the traced program exited $busy_rc, not 143 (our SIGTERM)"
    elif [ "$more" -eq 0 ]; then fail $name "no program started in the 30 s after the tracer's exit"
    elif [ -n "$stalls" ]; then fail $name "the kernel reported a stall: $stalls"
    elif [ "$left" -ne 0 ]; then fail $name "$left uprobe_events left"
    elif grep -qx locktrace /proc/[0-9]*/comm 2>/dev/null; then fail $name "a locktrace process is left"
    else pass $name; fi
    say "$name: stopped ${took}s after SIGTERM; dates started during the detach: $during, after it: $more"
}

finish() {
    say done
    sync
    echo o >/proc/sysrq-trigger
    sleep 30
}

# The checks, in order; the kernel command line may name some of them
# (vmtest_checks=a,b: `vm-test --check`) and ask for each to run more than
# once (vmtest_repeat=N: `vm-test --repeat`).
CHECKS="ab_ba three_cycle trylock rwlock deadlock python_ab_ba run_status attach_detach detach_under_load"
wanted() {
    [ -z "$vmtest_checks" ] && return 0
    case ",$vmtest_checks," in *",$1,"*) return 0 ;; esac
    return 1
}
for _ in $(seq 1 ${vmtest_repeat:-1}); do
    for c in $CHECKS; do
        if wanted $c; then check_$c; fi
    done
done
finish
