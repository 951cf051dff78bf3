#!/usr/bin/env bash
# Builds (or finds in the cache) the guest image for the kernel scenarios: Debian 12's own kernel
# (linux-image-amd64) and a bookworm root with nfs-kernel-server, nfs-common and rpcbind, packed as
# an uncompressed cpio initramfs whose /init is tests/vm/guest/init.
#
# Usage: tests/vm/build-image.sh        (as root; prints the image directory on stdout)
# The image lands in ${NSMD_VM_CACHE:-/var/cache/nsmd-vm}/<key>/, where <key> hashes this script,
# the guest's /init and the candidate versions of every package apt would install. Any change to
# those makes a new image; the directory holds vmlinux (the kernel, uncompressed: qemu boots it
# through PVH), initrd.cpio, versions.txt (every package and version in the guest) and kernel.txt.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${NSMD_VM_CACHE:-/var/cache/nsmd-vm}"
suite=bookworm
mirror="${NSMD_VM_MIRROR:-http://deb.debian.org/debian}"
security="${NSMD_VM_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
packages=(linux-image-amd64 nfs-kernel-server nfs-common rpcbind iproute2 iputils-arping procps
    kmod util-linux mount e2fsprogs tcpdump python3-minimal)
# The kernel modules the scenarios need (their dependencies come with them).
modules=(nfsd nfsv3 nfs lockd sunrpc virtio_net virtio_blk virtio_pci 9p 9pnet_virtio ext4
    af_packet)

die() { echo "build-image: error: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "must run as root (mmdebstrap builds the guest's root as root)"
for tool in mmdebstrap cpio apt-cache sha256sum; do
    command -v "$tool" >/dev/null || die "$tool is missing: install the Debian packages listed in scripts/test.sh"
done

# The key: this script, the guest's init, and what apt would install today.
versions=$(apt-cache policy "${packages[@]}" 2>/dev/null | awk '/^[^ ]/{p=$1} /Candidate:/{print p, $2}')
echo "$versions" | grep -q '^linux-image-amd64: [0-9]' \
    || die "apt-cache knows no candidate for linux-image-amd64 (run apt-get update?)"
key=$( { cat "$0" "$here/guest/init"; echo "$versions" "$mirror" "$security"; } | sha256sum | cut -c1-16)
out="$cache/$key"
if [ -s "$out/initrd.cpio" ] && [ -s "$out/vmlinux" ] && [ -s "$out/kernel.txt" ]; then
    echo "build-image: cached image $out ($(cat "$out/kernel.txt"))" >&2
    echo "$out"
    exit 0
fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
root="$work/root"
start=$(date +%s)
echo "build-image: building $out with mmdebstrap (~1 min)" >&2
# INITRD=No: the kernel's postinst hooks skip update-initramfs; our initramfs is the root itself.
INITRD=No mmdebstrap --variant=minbase --mode=root \
    --include="$(IFS=,; echo "${packages[*]}")" \
    --aptopt='Apt::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    "$suite" "$root" \
    "deb $mirror $suite main" "deb $mirror $suite-updates main" \
    "deb $security $suite-security main" >"$work/mmdebstrap.log" 2>&1 \
    || { tail -30 "$work/mmdebstrap.log" >&2; die "mmdebstrap failed (log above)"; }

kver=$(ls "$root/lib/modules")
[ "$(echo "$kver" | wc -w)" -eq 1 ] || die "expected one kernel in the guest, found: $kver"
kpkg=$(chroot "$root" dpkg-query -W -f='${Package} ${Version}\n' "linux-image-$kver")
chroot "$root" dpkg-query -W -f='${Package} ${Version}\n' >"$work/versions.txt"

# The kernel: Debian ships a compressed bzImage; qemu boots the uncompressed ELF (PVH entry)
# faster under TCG, so unpack it the way the kernel's scripts/extract-vmlinux does.
bz="$root/boot/vmlinuz-$kver"
extract() { # $1 = magic (printf format), $2 = decompressor
    local off
    for off in $(LC_ALL=C grep -abo "$(printf "$1")" "$bz" | cut -d: -f1); do
        tail -c +"$((off + 1))" "$bz" | $2 >"$work/vmlinux" 2>/dev/null || true
        if [ "$(head -c 4 "$work/vmlinux" 2>/dev/null | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then
            return 0
        fi
    done
    return 1
}
extract '\037\213\010' 'gzip -dc' || extract '\3757zXZ' 'xz -dc' \
    || extract '\050\265\057\375' 'zstd -dc' \
    || die "could not unpack the ELF kernel from $bz"

# Only the modules the scenarios load, with their dependencies.
mods="$work/modules"
mkdir -p "$mods"
for m in "${modules[@]}"; do
    chroot "$root" modprobe -S "$kver" --show-depends "$m" | awk '$1=="insmod"{print $2}'
done | sort -u >"$work/modlist"
[ -s "$work/modlist" ] || die "modprobe found none of: ${modules[*]}"
while read -r m; do
    mkdir -p "$mods$(dirname "$m")"
    cp -a "$root$m" "$mods$m"
done <"$work/modlist"
rm -rf "$root/lib/modules/$kver/kernel"
cp -a "$mods/lib/modules/$kver/kernel" "$root/lib/modules/$kver/kernel"
chroot "$root" depmod "$kver"

# Trim what a guest never uses, then the guest's files.
rm -rf "${root:?}"/boot/* "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc "$root"/usr/share/man "$root"/usr/share/locale "$root"/usr/lib/firmware
install -m 0755 "$here/guest/init" "$root/init"
mkdir -p "$root/host" "$root/results"
(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) >"$work/initrd.cpio"

echo "$kver ($kpkg)" >"$work/kernel.txt"
mkdir -p "$out"
mv "$work/vmlinux" "$work/initrd.cpio" "$work/versions.txt" "$work/kernel.txt" "$out/"
echo "build-image: built $out in $(( $(date +%s) - start )) s: kernel $(cat "$out/kernel.txt"), initrd $(du -m "$out/initrd.cpio" | cut -f1) MB" >&2
echo "$out"
