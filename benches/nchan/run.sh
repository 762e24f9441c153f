#!/usr/bin/env bash
# nginx + Nchan against the demo server on the same machine, interleaved: the reference scenario
# and the idle-memory scenario of benches/run-load.sh, driven by the same load generator
# (benches/tools, binary `loadgen`), one JSON line per run appended to benches/results/nchan.jsonl.
#
#   nice -n -10 benches/nchan/run.sh [SUITE...]     # default: main idle
#
# Suites (each run: Nchan first, then the demo):
#   main    2 instances on one Redis, 200 subscribers split over both, 2 000 events at 1 000/s
#           published alternately to both; RUNS times (default 5)
#   idle    memory per idle connection, 5 000 connections on one instance; IDLE_RUNS times
#           (default 3)
#
# Nchan: two independent nginx instances (each its own master and one worker, own prefix, pid
# file and temp directories under a mktemp directory, on free 127.0.0.1 ports), configured from
# benches/nchan/nginx.conf.in, both on the same Redis. They are started afresh for every run,
# as the load generator starts the demo instances afresh; the load generator gets their
# masters' and workers' pids for CPU time and memory.
#
# Environment: RUNS, IDLE_RUNS, REDIS_PORT (default 6394; a private redis-server is started on
# it and stopped at the end), RESULTS (default benches/results), DEMO (the demo binary; default:
# the one this script builds), NCHAN_MODULE (default /usr/lib/nginx/modules/ngx_nchan_module.so).
# Needs nginx with the Nchan module (Debian: apt-get install libnginx-mod-nchan), redis-server,
# redis-cli and python3 (to find free ports). Every run is bounded in time and stops by itself.
set -euo pipefail

cd "$(dirname "$0")/../.."
RUNS=${RUNS:-5}
IDLE_RUNS=${IDLE_RUNS:-3}
REDIS_PORT=${REDIS_PORT:-6394}
RESULTS=${RESULTS:-benches/results}
NCHAN_MODULE=${NCHAN_MODULE:-/usr/lib/nginx/modules/ngx_nchan_module.so}
TEMPLATE=benches/nchan/nginx.conf.in
SUITES=("$@")
[ ${#SUITES[@]} -eq 0 ] && SUITES=(main idle)

# 5 000 connections need as many descriptors in the load generator and in the servers.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
[ "$NOFILE" = unlimited ] && NOFILE=65536
if [ "$NOFILE" -lt 5200 ]; then
    echo "nchan: only $NOFILE file descriptors; the 5 000-connection runs will fail" >&2
fi

command -v nginx >/dev/null || { echo "nchan: no nginx (apt-get install libnginx-mod-nchan)" >&2; exit 1; }
[ -f "$NCHAN_MODULE" ] || { echo "nchan: no Nchan module at $NCHAN_MODULE" >&2; exit 1; }

cargo build --release --example demo >&2
cargo build --release -p tower-sse-bench >&2
BIN=${CARGO_TARGET_DIR:-target}/release
DEMO=${DEMO:-$BIN/examples/demo}
mkdir -p "$RESULTS"
OUT=$RESULTS/nchan.jsonl

WORK=$(mktemp -d /tmp/nchan-bench.XXXXXX)
REDIS_PID=
NGINX_PIDS=()

stop_nginx() {
    local pid
    for pid in "${NGINX_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${NGINX_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    NGINX_PIDS=()
}
cleanup() {
    stop_nginx
    if [ -n "$REDIS_PID" ]; then
        kill -TERM "$REDIS_PID" 2>/dev/null || true
        wait "$REDIS_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# Redis in the foreground of a background job, so it is this script's child and is reaped.
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
    >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
for _ in $(seq 50); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
    sleep 0.1
done
redis-cli -p "$REDIS_PORT" ping >/dev/null
REDIS="redis://127.0.0.1:$REDIS_PORT"

echo "nchan: $(nginx -v 2>&1), module $NCHAN_MODULE" \
    "($(dpkg-query -W -f '${Package} ${Version}' libnginx-mod-nchan 2>/dev/null || echo '?'))," \
    "$(redis-server --version | cut -d' ' -f1-3)" >&2

free_ports() { # N: N free loopback ports
    python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# start_nginx N: N fresh instances; sets TARGETS (URL,URL) and PIDS (masters and workers).
start_nginx() {
    local n=$1 i port dir master workers ports
    read -r -a ports <<<"$(free_ports "$n")"
    TARGETS=
    PIDS=
    for ((i = 0; i < n; i++)); do
        port=${ports[$i]}
        dir=$(mktemp -d "$WORK/nginx$i.XXXXXX")
        sed -e "s#@NCHAN_MODULE@#$NCHAN_MODULE#" -e "s#@DIR@#$dir#g" -e "s#@PORT@#$port#g" \
            -e "s#@REDIS_PORT@#$REDIS_PORT#g" -e "s#@NOFILE@#$NOFILE#g" \
            "$TEMPLATE" >"$dir/nginx.conf"
        nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/stderr.log" 2>&1 &
        master=$!
        NGINX_PIDS+=("$master")
        workers=
        for _ in $(seq 100); do
            if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
                workers=$(pgrep -P "$master" | paste -sd, -)
                [ -n "$workers" ] && break
            fi
            kill -0 "$master" 2>/dev/null || break
            sleep 0.1
        done
        if [ -z "$workers" ]; then
            echo "nchan: nginx on port $port did not start:" >&2
            cat "$dir/stderr.log" "$dir/error.log" >&2 2>/dev/null || true
            exit 1
        fi
        TARGETS+="${TARGETS:+,}http://127.0.0.1:$port"
        PIDS+="${PIDS:+,}$master,$workers"
    done
}

# The nginx error logs of the instances just stopped: warnings and worse, except the expected
# start-up lines.
nginx_errors() {
    cat "$WORK"/nginx*/error.log 2>/dev/null |
        grep -E '\[(warn|error|crit|alert|emerg)\]' |
        grep -v -E 'setrlimit\(RLIMIT_NOFILE' || true
    rm -rf "$WORK"/nginx*
}

# loadgen [OPTIONS...]: one run, its JSON lines appended to $OUT.
loadgen() {
    echo "+ loadgen $*" >&2
    "$BIN/loadgen" --redis-pid "$REDIS_PID" --max-secs 240 "$@" >>"$OUT"
    sleep 1
}

nchan_run() { # INSTANCES [OPTIONS...]
    local n=$1
    shift
    start_nginx "$n"
    loadgen --label nchan --target "$TARGETS" --pids "$PIDS" "$@"
    stop_nginx
    local errors
    errors=$(nginx_errors)
    if [ -n "$errors" ]; then
        echo "nchan: nginx logged:" >&2
        echo "$errors" | head -20 >&2
    fi
}

demo_run() { # INSTANCES [OPTIONS...]
    local n=$1
    shift
    loadgen --label vs-nchan --spawn-demo "$DEMO" --instances "$n" --backend pubsub \
        --redis "$REDIS" "$@"
}

for suite in "${SUITES[@]}"; do
    case $suite in
    main) runs=$RUNS ;;
    idle) runs=$IDLE_RUNS ;;
    *)
        echo "nchan: unknown suite $suite" >&2
        exit 2
        ;;
    esac
    for run in $(seq "$runs"); do
        echo "== $suite, run $run of $runs; $(uptime)" >&2
        case $suite in
        main)
            reference=(--scenario fanout --subscribers 200 --events 2000 --rate 1000)
            nchan_run 2 "${reference[@]}"
            demo_run 2 "${reference[@]}"
            ;;
        idle)
            nchan_run 1 --scenario idle --subscribers 5000
            demo_run 1 --scenario idle --subscribers 5000
            ;;
        esac
    done
done
echo "results in $OUT" >&2
