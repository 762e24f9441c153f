#!/usr/bin/env bash
# The demo on a Redis Cluster (sharded Pub/Sub per topic) against the demo on a single Redis,
# interleaved: the reference scenario of benches/run-load.sh driven by the same load generator
# (benches/tools, binary `loadgen`), one JSON line per run appended to benches/results/cluster.jsonl.
#
#   nice -n -10 benches/cluster/run.sh
#
# Each round (RUNS times, default 5) runs the reference scenario, 2 instances, 200 subscribers
# split over both, 2 000 events at 1 000/s published alternately to both, once per backend in
# BACKENDS on the cluster, then once on the single Redis:
#
#   cluster-pubsub   demo --redis-cluster URL,URL,URL --backend pubsub
#   cluster-streams  demo --redis-cluster URL,URL,URL --backend streams
#   single-pubsub    demo --redis redis://127.0.0.1:$REDIS_PORT --backend pubsub
#
# The cluster: three primaries, no replicas, on 127.0.0.1:$CLUSTER_PORT and the two ports
# after it (cluster bus on each port + 10000), each with its own mktemp directory (no
# persistence), created with `redis-cli --cluster create` and waited for until every node
# reports cluster_state:ok. The single Redis is a private redis-server as in run-load.sh.
# Everything is stopped and the directories removed when the script exits. The load generator
# takes one Redis pid, so for the cluster runs the script prints the three nodes' CPU time
# itself (on stderr; not in the JSON, whose redis_cpu_s is null for them).
#
# SCENARIOS (default "reference") adds `topics`: 1 000 topics with one subscriber each, over
# 2 instances, 2 000 events at 1 000/s, so the load spreads over the shards (labels end in
# -topics).
#
# Environment: RUNS (default 5), BACKENDS (default "pubsub streams"), SCENARIOS, CLUSTER_PORT
# (default 7101), REDIS_PORT (default 6392), RESULTS (default benches/results).
# Needs redis-server and redis-cli (5 or newer). Every run is bounded in time and stops by
# itself; loopback only.
set -euo pipefail

cd "$(dirname "$0")/../.."
RUNS=${RUNS:-5}
read -r -a BACKENDS <<<"${BACKENDS:-pubsub streams}"
CLUSTER_PORT=${CLUSTER_PORT:-7101}
REDIS_PORT=${REDIS_PORT:-6392}
RESULTS=${RESULTS:-benches/results}
read -r -a SCENARIOS <<<"${SCENARIOS:-reference}"
PORTS=("$CLUSTER_PORT" $((CLUSTER_PORT + 1)) $((CLUSTER_PORT + 2)))

for port in "${PORTS[@]}" "$REDIS_PORT"; do
    if redis-cli -p "$port" ping >/dev/null 2>&1; then
        echo "cluster: something already answers on 127.0.0.1:$port; pick other ports" \
            "(CLUSTER_PORT, REDIS_PORT)" >&2
        exit 1
    fi
done

cargo build --release --example demo >&2
cargo build --release -p tower-sse-bench >&2
BIN=${CARGO_TARGET_DIR:-target}/release
mkdir -p "$RESULTS"
OUT=$RESULTS/cluster.jsonl

NODE_DIRS=()
NODE_PIDS=()
REDIS_PID=

# The pid a redis-server on PORT reports, or nothing.
redis_pid() {
    redis-cli -p "$1" info server 2>/dev/null | awk -F: '/^process_id/ {print $2}' | tr -d '\r'
}

cleanup() {
    local pid dir
    for pid in "${NODE_PIDS[@]}" $REDIS_PID; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${NODE_PIDS[@]}" $REDIS_PID; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    done
    for dir in "${NODE_DIRS[@]}"; do rm -rf "$dir"; done
}
trap cleanup EXIT

# The cluster nodes.
for port in "${PORTS[@]}"; do
    dir=$(mktemp -d "/tmp/cluster-bench-$port.XXXXXX")
    NODE_DIRS+=("$dir")
    redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
        --cluster-config-file "nodes-$port.conf" --dir "$dir" --save "" --appendonly no \
        --daemonize yes --pidfile "$dir/redis-$port.pid" --logfile "$dir/redis.log" >/dev/null
done
for port in "${PORTS[@]}"; do
    pid=
    for _ in $(seq 50); do
        pid=$(redis_pid "$port")
        [ -n "$pid" ] && break
        sleep 0.1
    done
    if [ -z "$pid" ]; then
        echo "cluster: the node on port $port did not start" >&2
        exit 1
    fi
    NODE_PIDS+=("$pid")
done
NODES=()
for port in "${PORTS[@]}"; do NODES+=("127.0.0.1:$port"); done
redis-cli --cluster create "${NODES[@]}" --cluster-replicas 0 --cluster-yes >&2
for port in "${PORTS[@]}"; do
    ok=
    for _ in $(seq 100); do
        if redis-cli -p "$port" cluster info | tr -d '\r' | grep -qx 'cluster_state:ok'; then
            ok=1
            break
        fi
        sleep 0.1
    done
    if [ -z "$ok" ]; then
        echo "cluster: the node on port $port never reached cluster_state:ok" >&2
        redis-cli -p "$port" cluster info >&2 || true
        exit 1
    fi
done
CLUSTER=$(printf 'redis://%s,' "${NODES[@]}")
CLUSTER=${CLUSTER%,}

# The single Redis, as run-load.sh starts it.
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
    --pidfile "/tmp/run-load-redis-$REDIS_PORT.pid" >/dev/null
for _ in $(seq 50); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
    sleep 0.1
done
REDIS_PID=$(redis_pid "$REDIS_PORT")
[ -n "$REDIS_PID" ] || { echo "cluster: the Redis on port $REDIS_PORT did not start" >&2; exit 1; }
REDIS="redis://127.0.0.1:$REDIS_PORT"

echo "cluster: $(redis-server --version | cut -d' ' -f1-3); nodes $CLUSTER (pids" \
    "${NODE_PIDS[*]}); single $REDIS (pid $REDIS_PID)" >&2

# utime + stime of the cluster nodes, in clock ticks.
cluster_ticks() {
    local pid total=0 stat f
    for pid in "${NODE_PIDS[@]}"; do
        stat=$(cat "/proc/$pid/stat")
        read -r -a f <<<"${stat##*) }"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

# loadgen [OPTIONS...]: one run, its JSON lines appended to $OUT.
loadgen() {
    echo "+ loadgen $*" >&2
    "$BIN/loadgen" --max-secs 240 "$@" >>"$OUT"
    sleep 1
}

TICK=$(getconf CLK_TCK)

for run in $(seq "$RUNS"); do
    echo "== run $run of $RUNS; $(uptime)" >&2
    for scenario in "${SCENARIOS[@]}"; do
        case $scenario in
            reference)
                options=(--scenario fanout --instances 2 --subscribers 200 --events 2000
                    --rate 1000)
                suffix=
                ;;
            topics)
                options=(--scenario topics --instances 2 --topics 1000 --subscribers 1000
                    --events 2000 --rate 1000)
                suffix=-topics
                ;;
            *)
                echo "cluster: unknown scenario $scenario" >&2
                exit 1
                ;;
        esac
        for backend in "${BACKENDS[@]}"; do
            before=$(cluster_ticks)
            loadgen --label "cluster-$backend$suffix" --spawn-demo "$BIN/examples/demo" \
                --backend "$backend" --server-arg --redis-cluster --server-arg "$CLUSTER" \
                "${options[@]}"
            after=$(cluster_ticks)
            echo "cluster: the three nodes used $(awk -v t=$((after - before)) -v hz="$TICK" \
                'BEGIN {printf "%.2f", t / hz}') s of CPU (including the 1 s pause after" \
                "the run)" >&2
        done
        loadgen --label "single-pubsub$suffix" --spawn-demo "$BIN/examples/demo" --backend pubsub \
            --redis "$REDIS" --redis-pid "$REDIS_PID" "${options[@]}"
    done
done
echo "results in $OUT" >&2
