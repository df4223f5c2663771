#!/usr/bin/env bash
# Pod-to-pod throughput across two simulated clusters of three nodes, with
# Strait and over the same path without it (plain routing across the WAN and
# a plain VXLAN between the nodes, no encryption), interleaved in one run:
# non-gateway -> non-gateway, gateway -> gateway, gateway -> non-gateway,
# single TCP stream, iperf3 receiver figure, medians over rounds. The
# topology is built by netns-tests/src/bin/bench-pods.rs with the test
# harness; this script builds it, runs it and writes its section of
# BENCHMARKS.md (between the bench-pods markers; the rest of the file is
# kept). Run as root from anywhere:
#
#   netns-tests/bench-pods.sh
#
# Environment: BENCH_SECONDS (10) per iperf3 run, BENCH_ROUNDS (3),
# STRAIT_BIN (target/release/strait, built with cargo unless set),
# BENCH_OUTPUT (BENCHMARKS.md at the repo root; "-" only prints the
# section), BENCH_LOG_DIR (keep the agents' logs and configs there; by
# default they are deleted).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# shellcheck source=netns-tests/bench-common.sh
source "$ROOT/netns-tests/bench-common.sh"
bench_setup bench-pods ip bridge iperf3 ping ss nft curl timeout python3 cargo

build_and_run_bench bench-pods

CMD="BENCH_SECONDS=$SECONDS_PER_RUN BENCH_ROUNDS=$ROUNDS netns-tests/bench-pods.sh"
SECTION=$TMP/section.md
E_LOAD_BEFORE=$LOAD_BEFORE E_RESULTS=$RESULTS E_REV=$STRAIT_REV E_CPU=$CPU E_NPROC=$(nproc) E_KERNEL=$(uname -r) \
E_DATE=$(date -u '+%Y-%m-%d %H:%M UTC') E_CMD=$CMD E_SECS=$SECONDS_PER_RUN E_ROUNDS=$ROUNDS \
python3 - > "$SECTION" <<'EOF'
import os
E = os.environ
runs, medians = [], {}
for line in open(E["E_RESULTS"]):
    f = line.rstrip("\n").split("\t")
    if f[0] == "run":
        runs.append((int(f[1]), f[2], f[3], float(f[4]), int(f[5]), f[6] if len(f) > 6 else "?"))
    elif f[0] == "median":
        medians[(f[1], f[2])] = float(f[3])
paths = ["non-gateway → non-gateway", "gateway → gateway", "gateway → non-gateway"]
# Submariner's published pod-to-pod shares with IPsec (../shared/anchors.md
# has the first two; the third is the figure issue 5 quotes).
submariner = {"non-gateway → non-gateway": "26 %", "gateway → gateway": "36 %",
              "gateway → non-gateway": "29 %"}
out = []
w = out.append
w("<!-- bench-pods:begin (netns-tests/bench-pods.sh writes this section) -->")
w("## Pod to pod across clusters: Strait beside the same path without it\n")
w(f"Machine: {E['E_CPU']}, {E['E_NPROC']} cores, kernel {E['E_KERNEL']}; run {E['E_DATE']}; strait {E['E_REV']}.\n")
w(f"Produced by (as root, from the repo root): `{E['E_CMD']}`\n")
w("Two simulated clusters (`netns-tests` harness) of three nodes each: a gateway node on its cluster's LAN bridge "
  "and the WAN bridge, two other nodes on the LAN only, a pod on every node (veth, host-gw routes between the nodes). "
  "**strait**: `strait agent` on every node — WireGuard (strait's userspace engine, MTU 1420) between the gateways, "
  "VXLAN `strait-vx` from the other nodes to their gateway, the `inet strait` nftables table. "
  "**without Strait**: the same namespaces and the same paths by hand, unencrypted — each gateway routes the other "
  "cluster's pod CIDR to the other gateway's WAN address, the other nodes reach their gateway over a plain VXLAN "
  "(VNI 1, MTU 1450). Both sets exist side by side; the runs alternate between them and the order rotates each "
  f"round. `iperf3 -t {E['E_SECS']}`, one TCP stream, pod to pod from cluster A to cluster B, receiver figure; "
  f"medians over {E['E_ROUNDS']} rounds. The host's load average before the run: {E['E_LOAD_BEFORE']}; "
  "per run in the details (iperf3 and the tunnels need about 2; more means other work shared the cores).\n")
w("| path (pod → pod) | without Strait (Mbit/s) | strait (Mbit/s) | strait's share | Submariner IPsec's share (published) |")
w("|---|---:|---:|---:|---:|")
shares = {}
for p in paths:
    bare, strait = medians.get((p, "bare")), medians.get((p, "strait"))
    share = None if not bare or strait is None else 100 * strait / bare
    shares[p] = share
    w(f"| {p} | {bare:,.0f} | {strait:,.0f} | {'n/a' if share is None else f'{share:.0f} %'} | {submariner[p]} |")
w("")
s = [shares[p] for p in paths]
if all(x is not None for x in s):
    w(f"Strait keeps {s[0]:.0f} % / {s[1]:.0f} % / {s[2]:.0f} % of the unencrypted path (non-gateway → non-gateway / "
      "gateway → gateway / gateway → non-gateway); Submariner's IPsec keeps 26 % / 36 % / 29 % "
      "(the first two, and 44 % / 100 % for its unencrypted VXLAN cable, from ../shared/anchors.md; the third as "
      "issue 5 quotes it). The bases differ: Submariner's shares are of the raw NIC "
      "between real machines, where the unencrypted path is bounded by the wire; here the base is veth and VXLAN "
      f"inside one {E['E_NPROC']}-core machine, which move many Gbit/s at memory speed, while every encrypted byte "
      "crosses strait's userspace WireGuard on the same cores (both gateways' tunnels and iperf3 at both ends "
      "compete for them). "
      "Absolute figures belong next to the tunnel benchmark above, not to a 10 GbE NIC.\n")
w("<details><summary>Per run</summary>\n")
w("| round | path | variant | Mbit/s | retransmits | host load (1 min) |")
w("|---:|---|---|---:|---:|---:|")
for r, p, v, mbits, retr, load in sorted(runs, key=lambda x: (x[1], x[2], x[0])):
    w(f"| {r} | {p} | {'without Strait' if v == 'bare' else 'strait'} | {mbits:,.0f} | {retr:,} | {load} |")
w("\n</details>")
w("<!-- bench-pods:end -->")
print("\n".join(out))
EOF

if [[ $OUTPUT == - ]]; then
    cat "$SECTION"
    exit 0
fi
write_section bench-pods "$OUTPUT" "$SECTION"
cat "$SECTION"
log "written to $OUTPUT"
