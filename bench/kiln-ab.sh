#!/bin/bash
# A/B of kiln binaries on one bench case, interleaved per round (the peers.sh cases and
# generated contexts must exist: run bench/kiln-peers.sh setup/run once first).
#
# usage: bench/kiln-ab.sh CASE ROUNDS KILN_BIN...
#   cold    = after the same reset as kiln-peers.sh's KILN_RESET, with --no-cache
#   onefile = (big-context) after change-one.sh
#   warm    = the same build again
# Prints wall seconds and user+sys CPU seconds (kiln and its children) per build.
# KILN_ROOT (default /tmp/kiln-bench/kiln-root), BENCH_TMP (default /tmp/kiln-bench),
# PEERS_DIR (default /work/shared/bench) can be set. SETTLE=31 waits that many seconds after the
# reset: ext4 without a journal skips (and re-reads) inodes freed in the last 30 s
# (dirty_expire_centisecs) when it allocates, so a cold build right after the reset pays for the
# number of files the reset deleted, which differs between binaries that link and that copy.
set -u
CASE=$1; N=$2; shift 2
export KILN_ROOT=${KILN_ROOT:-/tmp/kiln-bench/kiln-root}
BENCH_TMP=${BENCH_TMP:-/tmp/kiln-bench}
PEERS_DIR=${PEERS_DIR:-/work/shared/bench}
CTX=$BENCH_TMP/ctx/$CASE
TIME=$(mktemp); LOG=$(mktemp)
trap 'rm -f "$TIME" "$LOG"' EXIT
timed() {   # name op cmd...
    local name=$1 op=$2; shift 2
    local s=$EPOCHREALTIME
    /usr/bin/time -o "$TIME" -f "%U+%S" "$@" >"$LOG" 2>&1 || { echo "FAIL: $*"; tail -5 "$LOG"; }
    local e=$EPOCHREALTIME
    echo "$CASE $name $op wall $(echo "$e - $s" | bc) cpu $(tail -1 "$TIME" | bc)"
}
for r in $(seq "$N"); do
    for K in "$@"; do
        name=$(basename "$K")
        "$K" rmi "kbench/$CASE:kiln" >/dev/null 2>&1
        rm -rf "$KILN_ROOT/cache/records" "$KILN_ROOT/cache/builds" "$KILN_ROOT/cache/context-stat-cache"
        "$K" prune >/dev/null 2>&1; sync
        [ "${SETTLE:-0}" -gt 0 ] && sleep "$SETTLE"
        timed "$name" cold "$K" build --no-cache -t "kbench/$CASE:kiln" "$CTX"
        if [ "$CASE" = big-context ]; then
            "$PEERS_DIR/cases/big-context/change-one.sh" "$CTX" "ab-$r-$name" >/dev/null; sync
            timed "$name" onefile "$K" build -t "kbench/$CASE:kiln" "$CTX"
        fi
        sync
        timed "$name" warm "$K" build -t "kbench/$CASE:kiln" "$CTX"
    done
done
