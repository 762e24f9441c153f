#!/usr/bin/env bash
# The load bench: drives the demo server (and the baseline server) over HTTP on loopback with
# the load generator (benches/tools, binary `loadgen`) and appends one JSON line per run to benches/results/*.jsonl.
#
#   benches/run-load.sh [SUITE...]       # default: main subs topics idle resume
#
# Suites:
#   main    the reference scenario: 2 instances on one Redis (pubsub backend), 200 subscribers
#           split over both, 2 000 events at 1 000/s published alternately to both; demo and
#           baseline in one run, so the JSON has both and their ratio
#   subs    200, 2 000 and 10 000 subscribers on one topic, at 50 000 deliveries/s
#           (DELIVERIES=N for another rate; results in subs-Nk.jsonl)
#   topics  1, 100 and 10 000 topics with one subscriber each, 1 000 events/s
#   idle    memory per idle connection with 1 000, 5 000 and 10 000 open on one instance
#   resume  half the subscribers reconnect to the other instance mid-run with Last-Event-ID
#   delay   the main scenario with write delays of 0 to 12 ms
#
# Environment: RUNS (repetitions, default 3), REDIS_PORT (default 6392; a private
# redis-server is started on it and stopped at the end), RESULTS (default benches/results),
# SERVER_ARGS (extra options for the spawned servers), SERVER_ENV (NAME=VALUE pairs for
# them, e.g. TOWER_SSE_WRITE_DELAY_MS=2), TAG (a label stored with every run).
# Needs redis-server and redis-cli. Every run is bounded in time and stops by itself.
set -euo pipefail

cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
REDIS_PORT=${REDIS_PORT:-6392}
RESULTS=${RESULTS:-benches/results}
TAG=${TAG:-}
read -r -a EXTRA <<<"${SERVER_ARGS:-}"
read -r -a ENVS <<<"${SERVER_ENV:-}"
SUITES=("$@")
[ ${#SUITES[@]} -eq 0 ] && SUITES=(main subs topics idle resume)

# 10 000 connections need 10 000 descriptors in the load generator and in the server.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 10100 ]; then
    echo "run-load: only $(ulimit -n) file descriptors; the 10 000-connection runs will fail" >&2
fi

cargo build --release --example demo >&2
cargo build --release -p tower-sse-bench >&2
BIN=${CARGO_TARGET_DIR:-target}/release
mkdir -p "$RESULTS"

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
    --pidfile "/tmp/run-load-redis-$REDIS_PORT.pid" >/dev/null
for _ in $(seq 50); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
    sleep 0.1
done
REDIS_PID=$(redis-cli -p "$REDIS_PORT" info server | awk -F: '/^process_id/ {print $2}' | tr -d '\r')
stop_redis() { kill "$REDIS_PID" 2>/dev/null || true; }
trap stop_redis EXIT
REDIS="redis://127.0.0.1:$REDIS_PORT"

# loadgen OUTFILE [OPTIONS...]: one run, its JSON lines appended to OUTFILE.
loadgen() {
    local out=$1
    shift
    local label=()
    [ -n "$TAG" ] && label=(--label "$TAG")
    local args=()
    for a in "${EXTRA[@]}"; do args+=(--server-arg "$a"); done
    for e in "${ENVS[@]}"; do args+=(--server-env "$e"); done
    echo "+ loadgen $*" >&2
    "$BIN/loadgen" --backend pubsub --redis "$REDIS" --redis-pid "$REDIS_PID" \
        "${label[@]}" "${args[@]}" --max-secs 240 "$@" >>"$RESULTS/$out.jsonl"
    sleep 1
}

demo=(--spawn-demo "$BIN/examples/demo")
both=(--spawn-demo "$BIN/examples/demo" --spawn-baseline "$BIN/baseline")

for suite in "${SUITES[@]}"; do
    for run in $(seq "$RUNS"); do
        echo "== $suite, run $run of $RUNS; $(uptime)" >&2
        case $suite in
        main)
            loadgen main "${both[@]}" --scenario fanout --instances 2 \
                --subscribers 200 --events 2000 --rate 1000
            ;;
        subs)
            # The same deliveries per second (DELIVERIES, default 50 000) spread over more and
            # more connections, 3 s of publishing each.
            d=${DELIVERIES:-50000}
            out=subs
            [ "$d" != 50000 ] && out="subs-$((d / 1000))k"
            for n in 200 2000 10000; do
                rate=$((d / n))
                loadgen "$out" "${both[@]}" --scenario fanout --instances 2 \
                    --subscribers "$n" --events $((rate * 3)) --rate "$rate" --drain-ms 10000
            done
            ;;
        topics)
            for t in 1 100 10000; do
                loadgen topics "${both[@]}" --scenario topics --instances 2 \
                    --topics "$t" --subscribers "$t" --events 2000 --rate 1000
            done
            ;;
        idle)
            for n in 1000 5000 10000; do
                loadgen idle "${both[@]}" --scenario idle --instances 1 --subscribers "$n"
            done
            ;;
        resume)
            loadgen resume "${demo[@]}" --scenario resume --instances 2 \
                --subscribers 200 --events 2000 --rate 1000
            ;;
        delay)
            saved=("${ENVS[@]}")
            for ms in 0 2 4 6 8 10 12; do
                ENVS=("${saved[@]}" "TOWER_SSE_WRITE_DELAY_MS=$ms")
                loadgen delay "${demo[@]}" --scenario fanout --instances 2 \
                    --subscribers 200 --events 2000 --rate 1000
            done
            ENVS=("${saved[@]}")
            ;;
        *)
            echo "run-load: unknown suite $suite" >&2
            exit 2
            ;;
        esac
    done
done
echo "results in $RESULTS/; plot and medians: python3 benches/plot.py" >&2
