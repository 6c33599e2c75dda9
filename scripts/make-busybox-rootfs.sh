#!/bin/sh
# Writes a small busybox root file system as a tar (default: busybox-rootfs.tar), the base
# image of examples/hello: busybox-static with one symlink per applet, /etc/passwd and
# /etc/group with root and a `kiln` user. Needs busybox-static (apt-get install busybox-static).
set -eu
out=${1:-busybox-rootfs.tar}
busybox=${BUSYBOX:-/bin/busybox}
[ -x "$busybox" ] || { echo "error: $busybox is missing: apt-get install busybox-static" >&2; exit 1; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for d in bin dev etc home proc root run sbin sys tmp usr usr/bin usr/sbin var; do mkdir -p "$dir/$d"; done
chmod 700 "$dir/root"; chmod 1777 "$dir/tmp"
cp "$busybox" "$dir/bin/busybox"; chmod 755 "$dir/bin/busybox"
"$busybox" --list-full | while read -r applet; do
    [ -n "$applet" ] && [ "$applet" != bin/busybox ] || continue
    mkdir -p "$dir/$(dirname "$applet")"
    ln -sf /bin/busybox "$dir/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/bin/false\nkiln:x:1000:1000:kiln:/home/kiln:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$dir/etc/passwd"
printf 'root:x:0:\ndaemon:x:1:kiln\nkiln:x:1000:\nnogroup:x:65534:\n' >"$dir/etc/group"
echo kbase >"$dir/etc/hostname"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$dir" -cf "$out.tmp" .
mv "$out.tmp" "$out"
echo "$out"
