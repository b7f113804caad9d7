#!/usr/bin/env bash
# Prepares a small real Linux guest for QEMU: the Debian cloud kernel (unpacked in a cache, never
# installed into /boot) and an initramfs whose init starts named marker processes and prints in-guest
# ground truth to the serial console. Idempotent and cached; facts: shared/notes/qemu.md.
#
#   deploy/guest/guest-kit.sh OUTDIR SPEC...
#     SPEC = NAME:MIB:MARKER        a process NAME that fills MIB MiB with MARKER and stays
#          | free:NAME:MIB:MARKER   a process that fills, frees the memory, and exits (stale markers)
#          | work:MIB               the memory workload (workload.c): checks and rewrites MIB MiB for
#                                   ever, one WORKLOAD line per pass on the console
#   Writes OUTDIR/vmlinuz, OUTDIR/initrd.gz, OUTDIR/kernel-release; prints OUTDIR.
#   deploy/guest/guest-kit.sh --kernel FLAVOUR   prints the path of that flavour's cached vmlinuz
#   Cache: $SEMIGRATE_STATE_DIR/guest-cache (default /opt/semigrate/guest-cache).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
STATE=${SEMIGRATE_STATE_DIR:-/opt/semigrate}
CACHE=$STATE/guest-cache

log() { echo "guest-kit: $*" >&2; }
die() { echo "guest-kit: error: $*" >&2; exit 1; }

[ $# -ge 1 ] || die "usage: $0 OUTDIR SPEC..."
out=$1; shift
mkdir -p "$CACHE"

exec 9>"$CACHE/.lock"; flock 9

# --- packages ---------------------------------------------------------------------------------
missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
command -v gcc >/dev/null || missing+=(gcc libc6-dev)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]} (apt)"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update && apt-get install -y --no-install-recommends "${missing[@]}"; } >"$CACHE/apt.log" 2>&1 \
    || { tail -n 20 "$CACHE/apt.log" >&2; die "apt-get install ${missing[*]} failed"; }
fi

# --- kernel: the current kernel of a flavour, by the metapackage's dependency, cached ----------
# Only boot/ and the qemu_fw_cfg module are unpacked (the standard flavour's modules are 400 MB).
fetch_kernel() {
  local flavour=$1 pointer=$CACHE/kernel-$1 kdir pkg release
  kdir=$(cat "$pointer" 2>/dev/null || true)
  if [ -n "$kdir" ] && [ -f "$kdir/vmlinuz" ]; then echo "$kdir"; return 0; fi
  apt-get update >"$CACHE/apt.log" 2>&1 || true
  pkg=$(apt-cache depends "linux-image-$flavour" 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  [ -n "$pkg" ] || die "cannot resolve linux-image-$flavour to a kernel package"
  kdir=$CACHE/$pkg
  log "fetching $pkg"
  rm -rf "$kdir.tmp" && mkdir -p "$kdir.tmp/deb" "$kdir.tmp/x"
  (cd "$kdir.tmp/deb" && apt-get download "$pkg" >"$CACHE/download.log" 2>&1) || die "apt-get download $pkg failed"
  release=${pkg#linux-image-}
  dpkg-deb --fsys-tarfile "$kdir.tmp"/deb/*.deb \
    | tar -x -C "$kdir.tmp/x" --wildcards "./boot/vmlinuz-$release" '*/qemu_fw_cfg.ko*' \
    || die "unpacking $pkg failed"
  cp "$kdir.tmp/x/boot/vmlinuz-$release" "$kdir.tmp/vmlinuz"
  cp "$(find "$kdir.tmp/x" -name 'qemu_fw_cfg.ko*' | head -n 1)" "$kdir.tmp/qemu_fw_cfg.ko" 2>/dev/null || true
  echo "$release" >"$kdir.tmp/release"
  rm -rf "$kdir.tmp/x" "$kdir.tmp/deb" "$kdir"
  mv "$kdir.tmp" "$kdir"
  echo "$kdir" >"$pointer"
  echo "$kdir"
}

if [ "$out" = --kernel ]; then
  # deploy/guest/guest-kit.sh --kernel FLAVOUR: just the kernel (e.g. amd64, to test a wrong profile).
  [[ "${1:-}" =~ ^[a-z0-9-]+$ ]] || die "usage: $0 --kernel FLAVOUR"
  echo "$(fetch_kernel "$1")/vmlinuz"
  exit 0
fi
mkdir -p "$out"
kdir=$(fetch_kernel cloud-amd64)

# --- in-guest programs, cached by source hash ---------------------------------------------------
tools=$CACHE/tools-$(cat "$here/marker.c" "$here/pagemap.c" "$here/workload.c" | sha256sum | cut -c1-12)
if [ ! -x "$tools/workload" ]; then
  mkdir -p "$tools"
  gcc -static -O2 -o "$tools/marker" "$here/marker.c"
  gcc -static -O2 -o "$tools/pagemap" "$here/pagemap.c"
  gcc -static -O2 -o "$tools/workload" "$here/workload.c"
fi

# --- initramfs ----------------------------------------------------------------------------------
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,proc,sys,dev,run,tmp,lib}
cp /bin/busybox "$root/bin/busybox"
cp "$tools/marker" "$tools/pagemap" "$tools/workload" "$root/bin/"
[ -f "$kdir/qemu_fw_cfg.ko" ] && cp "$kdir/qemu_fw_cfg.ko" "$root/lib/"

{
  echo '#!/bin/busybox sh'
  echo '/bin/busybox --install -s /bin'
  echo 'mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev'
  echo 'mkdir -p /run/ready'
  # The module publishes VMCOREINFO to QEMU (-device vmcoreinfo), so it lands in the dump's note.
  echo '[ -f /lib/qemu_fw_cfg.ko ] && insmod /lib/qemu_fw_cfg.ko'
  echo 'echo SEMIGRATE-BOOTED'
  n=0
  work=
  for spec in "$@"; do
    IFS=: read -r a b c d <<<"$spec"
    if [ "$a" = work ]; then
      [[ "$b" =~ ^[0-9]+$ ]] || die "bad workload size '$b' in '$spec'"
      work=$b
      continue
    fi
    if [ "$a" = free ]; then name=$b mib=$c marker=$d mode=free; else name=$a mib=$b marker=$c mode=; fi
    [[ "$name" =~ ^[A-Za-z0-9_.-]{1,15}$ ]] || die "bad process name '$name' (1-15 of A-Za-z0-9_.-)"
    [[ "$mib" =~ ^[0-9]+$ ]] || die "bad size '$mib' in '$spec'"
    [[ "$marker" =~ ^[A-Za-z0-9_.-]+$ ]] || die "bad marker '$marker' (A-Za-z0-9_.-)"
    [ -e "$root/bin/$name" ] || ln -s marker "$root/bin/$name"
    if [ -n "$mode" ]; then
      echo "/bin/$name $marker $mib free"
    else
      echo "/bin/$name $marker $mib &"
    fi
    n=$((n + 1))
  done
  echo "while [ \$(ls /run/ready | wc -l) -lt $n ]; do sleep 0.2; done"
  if [ -n "$work" ]; then
    echo "/bin/workload $work &"
    echo 'while [ ! -e /run/work-ready ]; do sleep 0.2; done'
  fi
  echo 'echo GT-BEGIN'
  echo 'for pid in $(ls /run/ready); do [ -d /proc/$pid ] && /bin/pagemap $pid; done'
  echo "awk '/^Node/ {z=\$4} /^ +pages free/ {print \"GT-ZONE\", z, \$3}' /proc/zoneinfo"
  echo 'echo GT-RELEASE $(uname -r)'
  echo 'echo GT-END'
  echo 'echo SEMIGRATE-READY'
  echo 'while true; do sleep 3600; done'
} >"$root/init"
chmod +x "$root/init"

key=$( (cat "$root/init" "$tools/marker" "$tools/pagemap" "$tools/workload" /bin/busybox; cat "$root/lib/qemu_fw_cfg.ko" 2>/dev/null) | sha256sum | cut -c1-16)
if [ ! -f "$CACHE/initrd-$key.gz" ]; then
  (cd "$root" && find . | sort | /bin/busybox cpio -o -H newc 2>/dev/null | gzip -1) >"$CACHE/initrd-$key.tmp"
  mv "$CACHE/initrd-$key.tmp" "$CACHE/initrd-$key.gz"
fi
cp "$CACHE/initrd-$key.gz" "$out/initrd.gz"
cp "$kdir/vmlinuz" "$out/vmlinuz"
cp "$kdir/release" "$out/kernel-release"
log "guest ready in $out (kernel $(cat "$kdir/release"), $# processes)"
echo "$out"
