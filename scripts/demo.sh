#!/bin/sh
# The kiln demo on a fresh machine: build kiln (release), make a busybox root file system,
# import it as kiln-demo/busybox:1, build examples/hello twice (the second build is all
# CACHED) and run the result. Needs root, cargo, and busybox-static.
#
#   sudo scripts/demo.sh            # store in a fresh temporary directory
#   KILN_ROOT=/var/lib/kiln sudo -E scripts/demo.sh
set -eu
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "error: the demo needs root (namespaces, overlayfs)" >&2
    exit 1
fi
command -v cargo >/dev/null || { echo "error: cargo is missing (https://rustup.rs)" >&2; exit 1; }
if [ ! -x /bin/busybox ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export KILN_ROOT="${KILN_ROOT:-$work/root}"

echo "== building kiln (release)"
cargo build --release --quiet
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
kiln="$target_dir/release/kiln"

echo "== making the busybox root file system"
scripts/make-busybox-rootfs.sh "$work/busybox-rootfs.tar" >/dev/null
"$kiln" import "$work/busybox-rootfs.tar" kiln-demo/busybox:1

echo "== first build of examples/hello"
start=$(date +%s%N)
"$kiln" build --progress=plain -t kiln-demo/hello:1 examples/hello
cold=$(( ($(date +%s%N) - start) / 1000000 ))

echo "== second build (everything CACHED)"
start=$(date +%s%N)
"$kiln" build --progress=plain -t kiln-demo/hello:1 examples/hello 2>"$work/second.log"
warm=$(( ($(date +%s%N) - start) / 1000000 ))
cat "$work/second.log" >&2
summary=$(sed -n 's/.*done (\([0-9]*\) steps, \([0-9]*\) cached).*/\1 \2/p' "$work/second.log")
set -- $summary
if [ "$#" != 2 ] || [ "$1" != "$2" ]; then
    echo "error: the second build ran steps; expected every step CACHED" >&2
    exit 1
fi

echo "== kiln run --rm kiln-demo/hello:1"
"$kiln" run --rm kiln-demo/hello:1
"$kiln" history kiln-demo/hello:1
echo "cold build: ${cold} ms, warm build: ${warm} ms"
