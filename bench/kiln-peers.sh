#!/usr/bin/env bash
# Runs ../shared/bench/peers.sh with kiln as a peer and the right KILN_* hooks.
#
# usage: bench/kiln-peers.sh setup|run|summary ARGS...   (same arguments as peers.sh)
#   KILN       kiln binary (default: $CARGO_TARGET_DIR/release/kiln, else target/release/kiln)
#   KILN_ROOT  kiln's store for the bench (default /tmp/kiln-bench/kiln-root)
#   PEERS_SH   the runner (default: shared/bench/peers.sh found in ../ or ../../ of this repository)
#
# A cold kiln build must really re-run every step and re-hash the context, as a pruned
# BuildKit does: KILN_RESET drops the build-cache records, the per-build hit lists and the
# context stat cache, then `kiln prune` removes the layers and snapshots nothing names any
# more. The base image kbase/busybox:1 stays (as it does for the peers), and the build
# still passes --no-cache (KILN_COLD_FLAGS' default).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
if [ -z "${KILN:-}" ]; then
    KILN=${CARGO_TARGET_DIR:-$REPO/target}/release/kiln
fi
[ -x "$KILN" ] || { echo "kiln-peers.sh: no kiln binary at $KILN (cargo build --release)" >&2; exit 2; }
export KILN
export KILN_ROOT=${KILN_ROOT:-/tmp/kiln-bench/kiln-root}
export KILN_RESET=${KILN_RESET:-"rm -rf '$KILN_ROOT/cache/records' '$KILN_ROOT/cache/builds' '$KILN_ROOT/cache/context-stat-cache'; '$KILN' prune"}
if [ -z "${PEERS_SH:-}" ]; then
    for d in "$REPO/../shared" "$REPO/../../shared"; do
        [ -x "$d/bench/peers.sh" ] && { PEERS_SH=$(cd "$d" && pwd)/bench/peers.sh; break; }
    done
fi
PEERS_SH=${PEERS_SH:-/work/shared/bench/peers.sh}
[ -x "$PEERS_SH" ] || { echo "kiln-peers.sh: peers.sh not found at $PEERS_SH (set PEERS_SH)" >&2; exit 2; }
exec "$PEERS_SH" "$@"
