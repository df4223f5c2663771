#!/usr/bin/env bash
# Globalnet's cost: pod-to-pod TCP throughput and connections per second
# across two simulated clusters through globalnet's translation (identical
# CIDRs, ingress IPs, egress pool) and over the same path without it
# (distinct CIDRs, pod addresses), both with strait, interleaved in one run:
# gateway -> gateway and non-gateway -> non-gateway, medians over rounds.
# The topology is built by netns-tests/src/bin/bench-globalnet.rs with the
# test harness; this script builds it, runs it and writes its section of
# BENCHMARKS.md (between the bench-globalnet markers; the rest of the file
# is kept). Run as root from anywhere:
#
#   netns-tests/bench-globalnet.sh
#
# Environment: BENCH_SECONDS (10) per iperf3 run and per connection-rate
# run, BENCH_ROUNDS (3), STRAIT_BIN (target/release/strait, built with
# cargo unless set), BENCH_OUTPUT (BENCHMARKS.md at the repo root; "-" only
# prints the section), BENCH_LOG_DIR (keep the agents' logs and configs
# there; by default they are deleted).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# shellcheck source=netns-tests/bench-common.sh
source "$ROOT/netns-tests/bench-common.sh"
bench_setup bench-globalnet ip iperf3 ss nft curl timeout python3 cargo

build_and_run_bench bench-globalnet tcp-echo

CMD="BENCH_SECONDS=$SECONDS_PER_RUN BENCH_ROUNDS=$ROUNDS netns-tests/bench-globalnet.sh"
SECTION=$TMP/section.md
E_LOAD_BEFORE=$LOAD_BEFORE E_RESULTS=$RESULTS E_REV=$STRAIT_REV E_CPU=$CPU E_NPROC=$(nproc) E_KERNEL=$(uname -r) \
E_DATE=$(date -u '+%Y-%m-%d %H:%M UTC') E_CMD=$CMD E_SECS=$SECONDS_PER_RUN E_ROUNDS=$ROUNDS \
python3 - > "$SECTION" <<'PYEOF'
import os
E = os.environ
runs, medians = [], {}
for line in open(E["E_RESULTS"]):
    f = line.rstrip("\n").split("\t")
    if f[0] == "run":
        runs.append((int(f[1]), f[2], f[3], f[4], float(f[5]), f[6]))
    elif f[0] == "median":
        medians[(f[1], f[2], f[3])] = float(f[4])
paths = ["gateway → gateway", "non-gateway → non-gateway"]
out = []
w = out.append
w("<!-- bench-globalnet:begin (netns-tests/bench-globalnet.sh writes this section) -->")
w("## Globalnet: through the translation beside the same path without it\n")
w(f"Machine: {E['E_CPU']}, {E['E_NPROC']} cores, kernel {E['E_KERNEL']}; run {E['E_DATE']}; strait {E['E_REV']}.\n")
w(f"Produced by (as root, from the repo root): `{E['E_CMD']}`\n")
w("Two simulated clusters (`netns-tests` harness), each a gateway node and a worker node with a pod on each, "
  "`strait agent` on every node, twice side by side: **globalnet** — both clusters with the same pod CIDR "
  "(10.1.0.0/16) and service CIDR, globalnet on; the target pods' echo and iperf3 servers are exported and the "
  "client addresses their ingress IPs (egress SNAT to the pool in the source gateway, ingress DNAT in the target "
  "gateway, both in `inet strait`); **without globalnet** — distinct CIDRs, the client addresses the pods directly "
  "(the identity SNAT only). The runs alternate between the sets and the order rotates each round. "
  f"Throughput: `iperf3 -t {E['E_SECS']}`, one TCP stream, receiver figure. Connections: {E['E_SECS']} s of "
  "TCP connections to the pod's echo server, 4 at a time (connect, send a byte, read the echo, close; "
  "each a new conntrack entry and NAT binding in both gateways). "
  f"Medians over {E['E_ROUNDS']} rounds. The host's load average before the run: {E['E_LOAD_BEFORE']}; "
  "per run in the details (the benchmark needs about 2; more means other work shared the cores, which "
  "the interleaving spreads over both variants).\n")
w("| path (pod → pod) | without globalnet (Mbit/s) | globalnet (Mbit/s) | ratio | without globalnet (conn/s) | globalnet (conn/s) | ratio |")
w("|---|---:|---:|---:|---:|---:|---:|")
for p in paths:
    row = [p]
    for metric in ["mbits", "cps"]:
        plain, gn = medians.get((p, "plain", metric)), medians.get((p, "globalnet", metric))
        row += [f"{plain:,.0f}", f"{gn:,.0f}", "n/a" if not plain else f"{gn / plain:.2f}×"]
    w("| " + " | ".join(row) + " |")
w("")
w("<details><summary>Per run</summary>\n")
w("| round | path | variant | metric | value | host load (1 min) |")
w("|---:|---|---|---|---:|---:|")
for r, p, v, m, value, load in sorted(runs, key=lambda x: (x[1], x[3], x[2], x[0])):
    unit = "Mbit/s" if m == "mbits" else "conn/s"
    w(f"| {r} | {p} | {'without globalnet' if v == 'plain' else 'globalnet'} | {unit} | {value:,.0f} | {load} |")
w("\n</details>")
w("<!-- bench-globalnet:end -->")
print("\n".join(out))
PYEOF

if [[ $OUTPUT == - ]]; then
    cat "$SECTION"
    exit 0
fi
write_section bench-globalnet "$OUTPUT" "$SECTION"
cat "$SECTION"
log "written to $OUTPUT"
