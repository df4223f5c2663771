#!/usr/bin/env bash
# Runs every test tier of Strait on a fresh Debian machine, as root:
# installs what the tests need, checks formatting and lints, runs the unit
# tests, builds the release binary and runs the network-namespace tests.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "tests/run-all.sh: run as root (the network-namespace tests create namespaces and TUN devices)" >&2
  exit 1
fi

step() { printf '\n== %s\n' "$*"; }

step "installing test dependencies (Debian packages)"
packages=(iproute2 nftables wireguard-tools wireguard-go iperf3 iputils-ping tcpdump util-linux procps curl ethtool coreutils)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}"
fi
for tool in cargo rustfmt cargo-clippy; do
  command -v "$tool" >/dev/null || { echo "missing $tool: install Rust with rustup (components rustfmt, clippy)" >&2; exit 1; }
done
[ -e /dev/net/tun ] || { echo "/dev/net/tun is missing: load the tun module" >&2; exit 1; }

step "formatting and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings

step "unit tests (no privileges needed)"
cargo test --workspace --exclude strait-netns-tests

command -v go >/dev/null || { echo "missing go (1.24 or newer): needed to build kube-apiserver and etcd for the Kubernetes tests" >&2; exit 1; }
step "kube-apiserver and etcd for the Kubernetes tests (built once into a cache; the first build takes about 15 minutes)"
STRAIT_KUBE_BIN=$(tests/kube/build-binaries.sh | tail -n1)
export STRAIT_KUBE_BIN

step "release build"
cargo build --release --bin strait
export STRAIT_BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/strait"

step "network-namespace tests (real wireguard-go, wg, ip, nft)"
cargo test --no-fail-fast -p strait-netns-tests -- --test-threads=2

leftover=$(ip netns list | awk '{print $1}' | grep '^strait-' || true)
if [ -n "$leftover" ]; then
  echo "tests left network namespaces behind: $leftover" >&2
  exit 1
fi
step "all tiers passed"
