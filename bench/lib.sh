# Shell helpers the drivers share (sourced: `. "$HERE/lib.sh"`). Every one acts on processes the
# driver started itself, by PID, and only on 127.0.0.1.

say() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# The environment the container image sets for kube-balancer (the Dockerfile's `ENV` lines, as
# NAME=VALUE words), so that the benchmarks run this tree's build as the image runs it.
IMAGE_ENV=()
if [ -n "${REPO:-}" ] && [ -f "$REPO/Dockerfile" ]; then
    read -r -a IMAGE_ENV <<<"$(sed -n 's/^ENV //p' "$REPO/Dockerfile" | tr '\n' ' ')"
fi

# A driver sets RUN (its scratch folder) and PIDS=() (what it started), then
# `trap end_run EXIT`: on exit, each of PIDS gets TERM and up to 10 s (a process under valgrind
# writes its profile first), then KILL, and RUN goes (KEEP=1 keeps it, and says where).
end_run() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    if [ -n "${KEEP:-}" ]; then say "kept $RUN"; else rm -rf "$RUN"; fi
}

# start NAME CPU COMMAND...: runs COMMAND pinned to CPU, in the background, its output in
# $RUN/NAME.out; sets STARTED and adds it to PIDS.
STARTED=
start() {
    local name=$1 cpu=$2
    shift 2
    taskset -c "$cpu" "$@" >"$RUN/$name.out" 2>&1 &
    STARTED=$!
    PIDS+=("$STARTED")
}

# stop PID: TERM, up to 10 s to exit, then KILL.
stop() {
    local pid=$1
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# wait_port PORT [TRIES]: until something accepts on 127.0.0.1:PORT, TRIES times 0.1 s
# (default 100); false if nothing did.
wait_port() {
    for _ in $(seq "${2:-100}"); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# The PID and all its descendants (nginx's and Apache's workers).
tree() {
    ps -e -o pid=,ppid= | awk -v root="$1" '
        { parent[$1] = $2; pids[NR] = $1 }
        END {
            in_tree[root] = 1; print root
            do { added = 0
                for (i in pids) { p = pids[i]
                    if (!(p in in_tree) && (parent[p] in in_tree)) { in_tree[p] = 1; print p; added = 1 } }
            } while (added)
        }'
}

# CPU time (clock ticks, user + system) of a process tree.
cpu_ticks() {
    local total=0 pid stat rest
    for pid in $(tree "$1"); do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        rest=${stat##*) }
        read -ra f <<<"$rest"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}
TICK=$(getconf CLK_TCK)

# Busy time of one CPU (clock ticks), from /proc/stat.
cpu_busy() {
    awk -v cpu="cpu$1" '$1 == cpu { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat
}
