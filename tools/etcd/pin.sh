#!/usr/bin/env bash
# tools/etcd/pin.sh vX.Y.Z
#
# Writes versions/vX.Y.Z.mod and .sum: the module file that builds etcd
# release vX.Y.Z with this wrapper (go build -modfile=versions/vX.Y.Z.mod),
# every dependency resolved from the Go module proxy as that release pins
# it. An old release may pin a dependency that no longer builds with the
# current Go; raise it here, in the wrapper's module file, after pinning:
#
#   cd tools/etcd && go get -modfile=versions/vX.Y.Z.mod MODULE@VERSION
#
# and say in the commit which build error the raise fixes. etcd's own code
# is never patched. Commit both files: builds after that need only the
# proxy's (or the module cache's) copies of exactly those versions.
set -euo pipefail

die() {
	echo "pin.sh: $*" >&2
	exit 1
}

[[ $# -eq 1 ]] || die "usage: pin.sh vX.Y.Z (an etcd release, e.g. v3.6.16)"
v=$1
[[ $v =~ ^v3\.[0-9]+\.[0-9]+$ ]] || die "etcd version $v: want a v3 release as vX.Y.Z, e.g. v3.7.3"

cd "$(dirname "$0")"
mod=versions/$v.mod
sum=versions/$v.sum
[[ ! -e $mod ]] || die "$mod already exists; remove it to pin $v again"
mkdir -p versions
printf 'module github.com/etcd-functional/tools/etcd\n\ngo 1.26.0\n' >"$mod"
: >"$sum"
if ! go get -modfile="$mod" "go.etcd.io/etcd/server/v3@$v" || ! go mod tidy -modfile="$mod"; then
	rm -f "$mod" "$sum"
	die "could not resolve go.etcd.io/etcd/server/v3@$v from the module proxy"
fi
echo "pin.sh: wrote tools/etcd/$mod and $sum; now: make etcd ETCD_VERSION=$v"
