#!/usr/bin/env bash
# docker/rootfs.sh BIN_DIR OUT_DIR
#
# Assembles the root filesystem of the etcd-functional image into OUT_DIR
# (which must not exist yet), for docker/Dockerfile to COPY into an image
# built FROM scratch. Why scratch: no image can be pulled on the machines this
# suite runs on, so everything the containers need comes from this machine:
#
#   /bin/etcd, /bin/etcd-agent, /bin/etcd-tester   static Go binaries (BIN_DIR,
#                                                  normally bin/ from `make build`)
#   /usr/sbin/xtables-nft-multi + iptables* links  the agent isolates its etcd
#                                                  member with iptables inside its
#                                                  container's netns (NET_ADMIN)
#   every shared library those need (from ldd, with the loader
#   /lib64/ld-linux-x86-64.so.2) and the xtables extension modules dir
#   (libxt_*.so: `-p tcp --dport`, `-m comment`, ... load them at run time)
#   /etc/protocols, /etc/services, /etc/ethertypes (when the host has them),
#   a root-only /etc/passwd and /etc/group, writable /tmp, /run (xtables lock),
#   /data (agent base dir), /report (tester report dir)
#
# iptables and its libraries are taken from this host's files (Debian:
# `apt-get install iptables`; .ci/run installs it). The host must use the
# nf_tables backend binary (xtables-nft-multi); the kernel side is the host's
# kernel anyway. The tree uses the merged-/usr layout (/bin, /sbin, /lib,
# /lib64 are symlinks into /usr) so that it can also be copied over a Debian
# base image (docker build --build-arg BASE=debian:bookworm-slim).
set -euo pipefail

die() {
	echo "rootfs.sh: $*" >&2
	exit 1
}

[[ $# -eq 2 ]] || die "usage: rootfs.sh BIN_DIR OUT_DIR"
bin_dir=$1
out=$2
[[ ! -e $out ]] || die "$out already exists"
command -v ldd >/dev/null || die "ldd not found (Debian package libc-bin)"

# The three Go binaries must exist and be static: the image has a libc only
# because iptables needs one, and a cgo build would need the host's resolver
# libraries too.
for b in etcd etcd-agent etcd-tester; do
	[[ -f $bin_dir/$b && -x $bin_dir/$b ]] || die "$bin_dir/$b is missing (run make build)"
	if ldd "$bin_dir/$b" 2>/dev/null | grep -q '=>'; then
		die "$bin_dir/$b is dynamically linked; build it with CGO_ENABLED=0 (make build does)"
	fi
done

xtables=
for d in /usr/sbin /sbin /usr/local/sbin; do
	if [[ -x $d/xtables-nft-multi ]]; then
		xtables=$d/xtables-nft-multi
		break
	fi
done
[[ -n $xtables ]] || die "iptables (nf_tables backend, xtables-nft-multi) is not installed on this host: apt-get install iptables"

# usr_path PATH: where PATH lands in the merged-/usr tree, after resolving
# the symlinks in its directory part (the file itself may be a symlink; put
# copies its content).
usr_path() {
	local dir
	dir=$(realpath -e "$(dirname "$1")")
	case $dir in
	/bin | /bin/* | /sbin | /sbin/* | /lib | /lib/* | /lib64 | /lib64/* | /lib32 | /lib32/* | /libx32 | /libx32/*)
		dir=/usr$dir
		;;
	esac
	echo "$dir/$(basename "$1")"
}

# put SRC [DEST]: copy SRC's content (symlinks followed) to DEST in the tree.
put() {
	local src=$1 dest=${2:-}
	[[ -n $dest ]] || dest=$(usr_path "$src")
	mkdir -p "$out$(dirname "$dest")"
	cp -L --preserve=mode "$src" "$out$dest"
}

# parse_ldd: the library paths in ldd output on stdin. ldd prints "FILE:"
# before each file's list when given several, "name => /path (addr)" for a
# library and "/path (addr)" for the loader; "not found" is fatal.
parse_ldd() {
	local line
	while IFS= read -r line; do
		case $line in
		*"not found"*) die "ldd: $line" ;;
		*:) continue ;;
		*"=> /"*) line=${line#*=> } ;;
		*/*) ;;
		*) continue ;; # linux-vdso.so.1 and the like
		esac
		line=${line%% (*}
		echo "${line#"${line%%[![:space:]]*}"}"
	done | sort -u
}

# libs_of FILE...: the shared libraries the files need, as host paths.
libs_of() {
	local listing
	listing=$(ldd "$@") || die "ldd failed on one of: $*"
	parse_ldd <<<"$listing"
}

mkdir -p "$out"/usr/{bin,sbin,lib,lib64} "$out"/etc "$out"/run "$out"/data "$out"/report "$out"/var
for d in bin sbin lib lib64; do
	ln -s "usr/$d" "$out/$d"
done
ln -s ../run "$out/var/run"
mkdir -m 1777 "$out/tmp"

for b in etcd etcd-agent etcd-tester; do
	put "$bin_dir/$b" "/usr/bin/$b"
done

put "$xtables" /usr/sbin/xtables-nft-multi
for name in iptables iptables-nft iptables-save iptables-restore iptables-nft-save iptables-nft-restore \
	ip6tables ip6tables-nft ip6tables-save ip6tables-restore ip6tables-nft-save ip6tables-nft-restore; do
	ln -s xtables-nft-multi "$out/usr/sbin/$name"
done

# The extension modules live in an xtables/ dir beside libxtables (Debian:
# /usr/lib/x86_64-linux-gnu/xtables; libxtables has that path compiled in,
# which usr_path keeps).
xlibs=$(libs_of "$xtables")
libxtables=$(grep -m1 '/libxtables\.so' <<<"$xlibs") || true
[[ -n $libxtables ]] || die "$xtables does not link libxtables; not a usable iptables"
extdir=
for d in "$(dirname "$(realpath -e "$libxtables")")/xtables" "$(dirname "$libxtables")/xtables" "/usr$(dirname "$libxtables")/xtables"; do
	if [[ -d $d ]] && compgen -G "$d/libxt_*.so" >/dev/null; then
		extdir=$d
		break
	fi
done
[[ -n $extdir ]] || die "no xtables extension modules (libxt_*.so) found beside $libxtables"
extdest=$(usr_path "$extdir/x")
extdest=${extdest%/x}
mkdir -p "$out$extdest"
cp -a "$extdir/." "$out$extdest/"

# What the extensions need: one run of the loader with all of them preloaded
# lists everything (0.1 s; ldd takes ~0.05 s per file, and there are ~120),
# with the per-file ldd as the fallback for a loader without --preload.
mapfile -t exts < <(find "$extdir" -name '*.so' -type f | sort)
loader=$(grep -m1 '/ld-' <<<"$xlibs") || true
if [[ -n $loader ]] && listing=$("$loader" --preload "${exts[*]}" --list "$xtables" 2>/dev/null); then
	libs=$( (echo "$xlibs" && parse_ldd <<<"$listing") | grep -v "^$extdir/" | sort -u)
else
	libs=$(libs_of "$xtables" "${exts[@]}")
fi
while IFS= read -r lib; do
	put "$lib"
done <<<"$libs"

# Files iptables (libxtables, glibc's getprotobyname) may read. Optional:
# numeric ports and the builtin protocol names (tcp, udp, ...) work without.
for f in /etc/protocols /etc/services /etc/ethertypes; do
	if [[ -f $f ]]; then
		put "$f" "$f"
	fi
done
printf 'root:x:0:0:root:/root:/bin/etcd-agent\n' >"$out/etc/passwd"
printf 'root:x:0:\n' >"$out/etc/group"
printf 'hosts: files dns\nprotocols: files\nservices: files\n' >"$out/etc/nsswitch.conf"
mkdir -p "$out/root"

echo "rootfs.sh: $out: $(find "$out" -type f | wc -l) files, $(du -sh "$out" | cut -f1), iptables from $xtables, extensions from $extdir"
