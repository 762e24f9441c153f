#!/usr/bin/env bash
# Memory per idle SSE connection with hyper as released and with hyper's two HTTP/1 buffers
# sized to what an idle stream needs (benches/hyper/idle-buffers.patch): the demo on the
# in-process bus, 5 000 idle streams on one instance, the two builds alternating run by run.
#
#   benches/hyper/run.sh
#
# The patch changes hyper's src/proto/h1/io.rs in three places: the buffer for response heads
# starts empty instead of at 8 KiB; the read buffer is released once a request has been parsed
# and nothing else waits in it; and a read into a released buffer reserves 256 bytes, not 8 KiB
# (while a response streams, hyper keeps reading the connection to notice when the client goes,
# and that read used to take a full buffer again). It is an experiment, not a change ready for
# hyper: it shows what the HTTP/1 server's buffers cost an idle stream, and the patched build is
# used by nothing else.
#
# The script copies hyper's source (the version Cargo resolved) and this checkout to a
# temporary directory, applies the patch there, and builds the demo twice (the stock build in
# this checkout's target directory, the patched one in the temporary directory). One JSON line
# per run is appended to $RESULTS/hyper-idle.jsonl, labelled `stock` or `patched`.
#
# Environment: RUNS (default 3), SUBSCRIBERS (default 5000), RESULTS (default benches/results).
set -euo pipefail

cd "$(dirname "$0")/../.."
RUNS=${RUNS:-3}
SUBSCRIBERS=${SUBSCRIBERS:-5000}
RESULTS=${RESULTS:-benches/results}
mkdir -p "$RESULTS"
OUT=$RESULTS/hyper-idle.jsonl

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d /tmp/hyper-idle.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

cargo build --release --example demo >&2
cargo build --release -p tower-sse-bench >&2
BIN=${CARGO_TARGET_DIR:-target}/release

HYPER=$(cargo metadata --format-version 1 | python3 -c '
import json, sys
meta = json.load(sys.stdin)
print(next(p["manifest_path"] for p in meta["packages"] if p["name"] == "hyper"))
')
cp -r "$(dirname "$HYPER")" "$WORK/hyper"
patch -d "$WORK/hyper" -p1 <benches/hyper/idle-buffers.patch >&2

git archive HEAD | tar -x -C "$WORK" --one-top-level=repo
printf '\n[patch.crates-io]\nhyper = { path = "%s" }\n' "$WORK/hyper" >>"$WORK/repo/Cargo.toml"
(cd "$WORK/repo" && CARGO_TARGET_DIR="$WORK/target" cargo build --release --example demo >&2)

for run in $(seq "$RUNS"); do
    echo "== run $run of $RUNS" >&2
    for build in stock patched; do
        case $build in
            stock) demo=$BIN/examples/demo ;;
            patched) demo=$WORK/target/release/examples/demo ;;
        esac
        "$BIN/loadgen" --label "$build" --scenario idle --spawn-demo "$demo" --instances 1 \
            --backend memory --subscribers "$SUBSCRIBERS" --max-secs 240 >>"$OUT"
        sleep 1
    done
done
echo "results in $OUT" >&2
