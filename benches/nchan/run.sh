#!/usr/bin/env bash
# nginx + Nchan against the demo server on the same machine, interleaved: the reference scenario
# and the idle-memory scenario of benches/run-load.sh, driven by the same load generator
# (benches/tools, binary `loadgen`), one JSON line per run appended to benches/results/nchan.jsonl.
#
#   nice -n -10 benches/nchan/run.sh [SUITE...]     # default: main idle
#
# Suites (each run: Nchan first, then the floor where it takes part, then the demo):
#   main      2 instances on one Redis, 200 subscribers split over both, 2 000 events at 1 000/s
#             published alternately to both; RUNS times (default 5)
#   lowrate   the common workload: 2 000 subscribers of one topic, 100 events at 20/s, so every
#             delivery is its own write; 2 instances (the floor: 1); RUNS times
#   topics    2 000 topics with one subscriber each, 1 000 events at 100/s; 2 instances (the
#             floor: 1); RUNS times
#   sparse    2 000 topics with one subscriber each, 1 200 events at 20/s (60 s, mostly idle);
#             2 instances; SPARSE_RUNS times (default 3)
#   idle      5 000 idle connections on one instance, memory per connection; IDLE_RUNS times
#             (default 3)
#   idle10k   10 000 idle streams on one instance held for HOLD_MS (default 30 000): server CPU
#             per second and memory per stream; the floor too; IDLE_RUNS times
#   idlemax   19 000 idle streams on one demo instance (the most this machine's hard limit of
#             20 000 descriptors per process allows), held for HOLD_MS; demo only; IDLE_RUNS times
#   before    the main scenario with an older demo build ($OLD_DEMO) and this one, side by side
#             (no Nchan); RUNS times
#
# The floor (../shared/floor: one send(2) per delivery, nothing else) is built from FLOOR_SRC
# (default ../shared/floor) into target/floor-src; it is one instance with no Redis, so every
# publish goes to it.
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
SPARSE_RUNS=${SPARSE_RUNS:-3}
HOLD_MS=${HOLD_MS:-30000}
FLOOR_SRC=${FLOOR_SRC:-../shared/floor}
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

# The floor, built outside this workspace from its own sources.
FLOOR=target/floor-src/target/release/floor
if [[ " ${SUITES[*]} " =~ \ (lowrate|topics|idle10k)\  ]]; then
    rm -rf target/floor-src
    cp -r "$FLOOR_SRC" target/floor-src
    cargo build --release --manifest-path target/floor-src/Cargo.toml >&2
fi

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

# The floor: one instance, started afresh for every run like the others.
floor_run() { # [OPTIONS...]
    local port pid
    port=$(free_ports 1)
    "$FLOOR" --port "$port" >"$WORK/floor.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
    loadgen --label floor --target "http://127.0.0.1:$port" --pids "$pid" "$@"
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

demo_run() { # INSTANCES [OPTIONS...]
    local n=$1
    shift
    loadgen --label vs-nchan --spawn-demo "$DEMO" --instances "$n" --backend pubsub \
        --redis "$REDIS" "$@"
}

for suite in "${SUITES[@]}"; do
    case $suite in
    main | lowrate | topics | before) runs=$RUNS ;;
    sparse) runs=$SPARSE_RUNS ;;
    idle | idle10k | idlemax) runs=$IDLE_RUNS ;;
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
        lowrate)
            lowrate=(--scenario fanout --subscribers 2000 --events 100 --rate 20)
            nchan_run 2 "${lowrate[@]}"
            floor_run "${lowrate[@]}"
            demo_run 2 "${lowrate[@]}"
            ;;
        topics)
            topics=(--scenario topics --subscribers 2000 --events 1000 --rate 100)
            nchan_run 2 "${topics[@]}"
            floor_run "${topics[@]}"
            demo_run 2 "${topics[@]}"
            ;;
        sparse)
            sparse=(--scenario topics --subscribers 2000 --events 1200 --rate 20)
            nchan_run 2 "${sparse[@]}"
            demo_run 2 "${sparse[@]}"
            ;;
        idle)
            nchan_run 1 --scenario idle --subscribers 5000
            demo_run 1 --scenario idle --subscribers 5000
            ;;
        idle10k)
            idle10k=(--scenario idle --subscribers 10000 --hold-ms "$HOLD_MS")
            nchan_run 1 "${idle10k[@]}"
            floor_run "${idle10k[@]}"
            demo_run 1 "${idle10k[@]}"
            ;;
        idlemax)
            demo_run 1 --scenario idle --subscribers 19000 --hold-ms "$HOLD_MS"
            ;;
        before)
            [ -x "${OLD_DEMO:-}" ] || { echo "nchan: OLD_DEMO is not an executable" >&2; exit 2; }
            loadgen --label before-after --spawn-demo "$OLD_DEMO" --spawn-demo "$DEMO" \
                --instances 2 --backend pubsub --redis "$REDIS" \
                --scenario fanout --subscribers 200 --events 2000 --rate 1000
            ;;
        esac
    done
done
echo "results in $OUT" >&2
