#!/usr/bin/env bash
# Builds the kube-apiserver and etcd that the Kubernetes tests run (the way
# controller-runtime's envtest runs them), from the Go module proxy, into a
# cache outside the repository:
#
#   ${STRAIT_KUBE_CACHE:-/var/cache/strait-kube}/k8s-vX.Y.Z_etcd-vA.B.C/bin/{kube-apiserver,etcd}
#
# A run that finds both binaries there builds nothing. The last line printed
# is the bin directory (point STRAIT_KUBE_BIN at it), so callers can do
#   STRAIT_KUBE_BIN=$(tests/kube/build-binaries.sh | tail -n1)
#
# kube-apiserver: a small module of our own requires k8s.io/kubernetes and
# replaces every k8s.io/* staging module (the list comes from the replace
# section of k8s.io/kubernetes's own go.mod, which points them at
# ./staging/src/...) by its published v0.X.Y twin. etcd: a three-line main
# calling etcdmain.Main from go.etcd.io/etcd/server/v3. Debian's etcd (3.4)
# is too old for kube-apiserver 1.34: it is never used.
#
# Environment: STRAIT_KUBE_CACHE (cache root), STRAIT_K8S_VERSION,
# STRAIT_ETCD_VERSION (override the pinned versions), GOPROXY/GOFLAGS as
# usual. Needs Go (1.24 or newer) and about 3 GB of disk for the Go caches.
set -euo pipefail

K8S_VERSION="${STRAIT_K8S_VERSION:-v1.34.4}"
ETCD_VERSION="${STRAIT_ETCD_VERSION:-v3.6.16}"
CACHE_ROOT="${STRAIT_KUBE_CACHE:-/var/cache/strait-kube}"

prog="tests/kube/build-binaries.sh"
step() { printf '%s: %s\n' "$prog" "$*" >&2; }
die() {
  printf '%s: error: %s\n' "$prog" "$*" >&2
  exit 1
}

case "$K8S_VERSION" in v1.*.*) ;; *) die "STRAIT_K8S_VERSION must look like v1.34.4, not '$K8S_VERSION'" ;; esac
case "$ETCD_VERSION" in v3.*.*) ;; *) die "STRAIT_ETCD_VERSION must look like v3.6.16, not '$ETCD_VERSION'" ;; esac
# The staging modules are published as v0.<minor>.<patch> of the release.
STAGING_VERSION="v0.${K8S_VERSION#v1.}"
k8s_minor="${K8S_VERSION#v1.}"
k8s_minor="${k8s_minor%%.*}"
etcd_plain="${ETCD_VERSION#v}"

root="$CACHE_ROOT/k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}"
bin="$root/bin"

# Both binaries present and reporting the wanted versions.
built() {
  [ -x "$bin/kube-apiserver" ] && [ -x "$bin/etcd" ] || return 1
  "$bin/kube-apiserver" --version 2>/dev/null | grep -qx "Kubernetes $K8S_VERSION" || return 1
  "$bin/etcd" --version 2>/dev/null | grep -qx "etcd Version: $etcd_plain" || return 1
}

if built; then
  step "kube-apiserver $K8S_VERSION and etcd $ETCD_VERSION already built in $bin; nothing to do"
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || die "Go is not installed (needs Go 1.24 or newer; https://go.dev/dl/)"
mkdir -p "$root" || die "cannot create $root (set STRAIT_KUBE_CACHE to a writable directory)"
[ -w "$root" ] || die "$root is not writable (set STRAIT_KUBE_CACHE to a writable directory)"

# One builder at a time per version pair; a second caller waits, then finds
# the binaries built.
exec 9>"$root/.lock"
if command -v flock >/dev/null; then
  if ! flock -n 9; then
    step "another build holds $root/.lock; waiting for it"
    flock 9
  fi
  if built; then
    step "built meanwhile by another run: $bin"
    echo "$bin"
    exit 0
  fi
fi

mkdir -p "$bin" "$root/src"
export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -mod=mod" GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
start=$(date +%s)
step "building kube-apiserver $K8S_VERSION and etcd $ETCD_VERSION with $(go version | cut -d' ' -f3) (first build: 10-20 minutes)"
step "cache: $root"

# Runs a go command, its output to $log; prints a dot per 25 lines of
# `go build -v` package names (one line per package) and, on failure, the
# end of the log.
run_go() {
  local log="$1"
  shift
  local status=0
  "$@" >"$log" 2>&1 &
  local pid=$!
  local seen=0 lines
  while kill -0 "$pid" 2>/dev/null; do
    sleep 2
    lines=$(wc -l <"$log")
    while [ $((seen + 25)) -le "$lines" ]; do
      printf '.' >&2
      seen=$((seen + 25))
    done
  done
  wait "$pid" || status=$?
  [ "$seen" -gt 0 ] && printf ' %s lines\n' "$(wc -l <"$log")" >&2
  if [ "$status" -ne 0 ]; then
    printf '%s: `%s` failed (exit %s); last lines of %s:\n' "$prog" "$*" "$status" "$log" >&2
    tail -n 40 "$log" >&2
    return "$status"
  fi
}

# --- kube-apiserver ---------------------------------------------------------
kdir="$root/src/kube-apiserver"
mkdir -p "$kdir"
step "[1/6] fetching k8s.io/kubernetes@$K8S_VERSION's go.mod"
# -json reports a failure in its "Error" field, on stdout.
go mod download -json "k8s.io/kubernetes@$K8S_VERSION" >"$kdir/download.log" 2>&1 || true
kgomod=$(sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p' "$kdir/download.log")
[ -n "$kgomod" ] && [ -f "$kgomod" ] ||
  die "cannot download k8s.io/kubernetes@$K8S_VERSION from $(go env GOPROXY): $(grep -v '^[{}]' "$kdir/download.log" | tail -n 5)"

# The staging modules: every `k8s.io/X => ./staging/src/k8s.io/X` line.
staging=$(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\)[[:space:]]*=>[[:space:]]*\./staging/src/.*#\1#p' "$kgomod" | sort -u)
[ -n "$staging" ] || die "found no ./staging replace lines in $kgomod"
step "[2/6] writing $kdir/go.mod: require k8s.io/kubernetes $K8S_VERSION, $(echo "$staging" | wc -l) staging modules replaced by $STAGING_VERSION"
{
  echo "// Generated by $prog; not part of the repository."
  echo "module strait.test/kube-apiserver-build"
  echo
  echo "go 1.24.0"
  echo
  # Kubernetes builds with these GODEBUG defaults; a main module's own
  # godebug lines are the ones that count.
  grep '^godebug ' "$kgomod" || true
  echo
  echo "require k8s.io/kubernetes $K8S_VERSION"
  echo
  echo "replace ("
  for m in $staging; do
    echo "	$m => $m $STAGING_VERSION"
  done
  echo ")"
} >"$kdir/go.mod.new"
if ! cmp -s "$kdir/go.mod.new" "$kdir/go.mod"; then
  mv "$kdir/go.mod.new" "$kdir/go.mod"
  rm -f "$kdir/go.sum"
else
  rm -f "$kdir/go.mod.new"
fi

step "[3/6] resolving kube-apiserver's dependencies (go get; downloads on the first run)"
(cd "$kdir" && run_go "$kdir/get.log" go get "k8s.io/kubernetes/cmd/kube-apiserver@$K8S_VERSION") ||
  die "resolving k8s.io/kubernetes/cmd/kube-apiserver failed (log: $kdir/get.log)"

# What hack/lib/version.sh sets for a release build.
vpkgs=(k8s.io/component-base/version k8s.io/client-go/pkg/version)
ldflags="-s -w"
for p in "${vpkgs[@]}"; do
  ldflags+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$k8s_minor"
  ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
done
step "[4/6] compiling kube-apiserver (a dot per 25 packages)"
(cd "$kdir" && run_go "$kdir/build.log" go build -v -trimpath -ldflags "$ldflags" \
  -o "$bin/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver) ||
  die "compiling kube-apiserver failed (log: $kdir/build.log)"
mv -f "$bin/kube-apiserver.tmp" "$bin/kube-apiserver"

# --- etcd -------------------------------------------------------------------
edir="$root/src/etcd"
mkdir -p "$edir"
step "[5/6] resolving etcd $ETCD_VERSION (go.etcd.io/etcd/server/v3)"
cat >"$edir/main.go" <<'EOF'
// Generated by tests/kube/build-binaries.sh: etcd's own main.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
cat >"$edir/go.mod.new" <<EOF
// Generated by $prog; not part of the repository.
module strait.test/etcd-build

go 1.24.0

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
EOF
if ! cmp -s "$edir/go.mod.new" "$edir/go.mod"; then
  mv "$edir/go.mod.new" "$edir/go.mod"
  rm -f "$edir/go.sum"
else
  rm -f "$edir/go.mod.new"
fi
(cd "$edir" && run_go "$edir/get.log" go get "go.etcd.io/etcd/server/v3/etcdmain@$ETCD_VERSION") ||
  die "resolving go.etcd.io/etcd/server/v3@$ETCD_VERSION failed (log: $edir/get.log)"
step "[6/6] compiling etcd (a dot per 25 packages)"
(cd "$edir" && run_go "$edir/build.log" go build -v -trimpath \
  -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION" -o "$bin/etcd.tmp" .) ||
  die "compiling etcd failed (log: $edir/build.log)"
mv -f "$bin/etcd.tmp" "$bin/etcd"

built || die "built binaries do not report the expected versions: $("$bin/kube-apiserver" --version 2>&1 | head -n1); $("$bin/etcd" --version 2>&1 | head -n1)"
step "built in $(($(date +%s) - start)) s: $("$bin/kube-apiserver" --version), etcd $etcd_plain"
echo "$bin"
