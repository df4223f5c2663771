#!/usr/bin/env bash
# Strait's one-command demo, as root on a fresh Debian machine with Rust:
#
#   sudo netns-tests/demo.sh          (or: up)  install, build, bring up two
#                                     simulated clusters joined by strait
#   sudo netns-tests/demo.sh up --globalnet     the same, both clusters with
#                                     identical CIDRs, joined through globalnet
#   sudo netns-tests/demo.sh status   what is up and how to poke at it
#   sudo netns-tests/demo.sh down     remove every namespace and process of it
#
# The clusters are network namespaces on this machine (nodes, pods, a WAN
# bridge); nothing outside them is touched. State: /run/strait-demo.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
command=${1:-up}
variant=${2:-}
case "$command $variant" in
  "up "|"up --globalnet"|"down "|"status ") ;;
  *) echo "usage: sudo netns-tests/demo.sh [up [--globalnet]|status|down]" >&2; exit 2 ;;
esac
if [ "$(id -u)" -ne 0 ]; then
  echo "netns-tests/demo.sh: run as root: sudo netns-tests/demo.sh $command" >&2
  exit 1
fi

# Debian packages, installed only when one is missing.
if [ "$command" = up ]; then
  packages=(iproute2 wireguard-tools iputils-ping curl nftables procps)
  missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  [ -e /dev/net/tun ] || modprobe tun 2>/dev/null || true
  [ -e /dev/net/tun ] || { echo "/dev/net/tun is missing: load the tun module" >&2; exit 1; }
fi

# Build as the user who called sudo (so target/ stays theirs), with their
# rustup toolchain, which sudo's PATH does not include.
builder=()
user_home=$HOME
if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
  user_home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
  builder=(sudo -u "$SUDO_USER" -H)
fi
cargo=$(command -v cargo || true)
[ -n "$cargo" ] || [ ! -x "$user_home/.cargo/bin/cargo" ] || cargo=$user_home/.cargo/bin/cargo
[ -n "$cargo" ] || [ ! -x /root/.cargo/bin/cargo ] || cargo=/root/.cargo/bin/cargo

target="${CARGO_TARGET_DIR:-$repo/target}/release"
if [ "$command" = up ] || [ ! -x "$target/strait-demo" ]; then
  if [ -z "$cargo" ]; then
    echo "cargo is missing: install Rust with rustup (https://rustup.rs), then run this again" >&2
    exit 1
  fi
  echo "== building strait and the demo (cargo build --release)"
  "${builder[@]}" env PATH="$(dirname "$cargo"):$PATH" "$cargo" build --release --quiet --bin strait
  "${builder[@]}" env PATH="$(dirname "$cargo"):$PATH" "$cargo" build --release --quiet \
    -p strait-netns-tests --bin strait-demo --bin tcp-echo
fi

export STRAIT_BIN="$target/strait"
exec "$target/strait-demo" "$command" ${variant:+"$variant"}
