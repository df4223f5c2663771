#!/usr/bin/env bash
# Throughput, latency, CPU and memory of strait beside wireguard-go and
# boringtun-cli, measured in one run between two network namespaces joined by
# one veth pair (192.0.2.1 <-> 192.0.2.2), the tunnel 10.9.0.1 <-> 10.9.0.2 on
# top configured only with `wg set`. Both ends of a tunnel run the same
# implementation. Paths are measured round-robin for BENCH_ROUNDS rounds (the
# order rotates each round) and the medians reported. Run as root:
#
#   netns-tests/bench-tunnel.sh          # writes BENCHMARKS.md, prints it
#
# Environment: BENCH_SECONDS (10) per iperf3 run, BENCH_ROUNDS (3),
# STRAIT_BIN (target/release/strait, built when missing), WIREGUARD_GO
# (/usr/bin/wireguard-go), BORINGTUN_CLI (boringtun-cli on PATH or
# /opt/strait-peers/bin/boringtun-cli; its row is skipped when absent),
# BENCH_OUTPUT (BENCHMARKS.md at the repo root), BENCH_LOG_DIR (keep the
# daemons' logs there; by default they are deleted), BENCH_PATHS (measure
# only these of "veth floor wggo btcli strait", for quick comparisons),
# TUN_RELAY (netns-tests' tun-relay, built when missing).
#
# "floor" is tun-relay at both ends: packets relayed between TUN and UDP as
# they are, no encryption. Only its latency is measured: what any userspace
# tunnel pays for wake-ups and passes through the kernel, on this machine.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECONDS_PER_RUN=${BENCH_SECONDS:-10}
ROUNDS=${BENCH_ROUNDS:-3}
STRAIT_BIN=${STRAIT_BIN:-$ROOT/target/release/strait}
TUN_RELAY=${TUN_RELAY:-$ROOT/target/release/tun-relay}
WIREGUARD_GO=${WIREGUARD_GO:-/usr/bin/wireguard-go}
BORINGTUN_CLI=${BORINGTUN_CLI:-$(command -v boringtun-cli || echo /opt/strait-peers/bin/boringtun-cli)}
OUTPUT=${BENCH_OUTPUT:-$ROOT/BENCHMARKS.md}
PING_COUNT=500
# Pings this close keep the machine from idling between them (see the report).
WARM_SPACING=0.0002
MEM_PEERS=100

[[ $SECONDS_PER_RUN =~ ^[1-9][0-9]*$ && $SECONDS_PER_RUN -le 600 ]] || { echo "BENCH_SECONDS: 1..600" >&2; exit 2; }
[[ $ROUNDS =~ ^[1-9][0-9]*$ && $ROUNDS -le 20 ]] || { echo "BENCH_ROUNDS: 1..20" >&2; exit 2; }
[[ $(id -u) == 0 ]] || { echo "run as root" >&2; exit 2; }
for tool in ip wg iperf3 ping python3 timeout; do
    command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 2; }
done

# Everything this run creates carries RID: namespaces, links, UAPI sockets.
RID=$$
NSA=sbench-$RID-a
NSB=sbench-$RID-b
TMP=$(mktemp -d /tmp/sbench-$RID.XXXX)
LOGDIR=${BENCH_LOG_DIR:-$TMP/logs}
mkdir -p "$LOGDIR"
RESULTS=$TMP/results.tsv
PIDS=()     # every process started here, until reaped
IFNAMES=()  # every tunnel interface named here (for stale UAPI sockets)

log() { echo "[bench] $*" >&2; }

exited() { # PID: gone or a zombie
    [[ ! -e /proc/$1 ]] || [[ $(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) == Z ]]
}

poll() { # TRIES INTERVAL CMD...: until CMD succeeds, at most TRIES times
    local tries=$1 interval=$2 i
    shift 2
    for ((i = 0; i < tries; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep "$interval"
    done
    return 1
}

stop_pid() { # PID: TERM, bounded wait, KILL, reap
    local pid=$1 keep=() p
    kill -TERM "$pid" 2>/dev/null || true
    if ! poll 100 0.05 exited "$pid"; then
        kill -KILL "$pid" 2>/dev/null || true
        poll 100 0.05 exited "$pid" || log "pid $pid did not exit"
    fi
    if exited "$pid"; then wait "$pid" 2>/dev/null || true; fi
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

cleanup() {
    local rc=$? pid ifn
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    ip netns del "$NSA" 2>/dev/null || true
    ip netns del "$NSB" 2>/dev/null || true
    for ifn in "${IFNAMES[@]}"; do rm -f "/var/run/wireguard/$ifn.sock"; done
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- the implementations --------------------------------------------------
if [[ ! -x $STRAIT_BIN ]]; then
    log "building strait (cargo build --release)"
    (cd "$ROOT" && cargo build --release --bin strait >&2)
fi
if [[ ! -x $TUN_RELAY ]]; then
    log "building tun-relay (cargo build --release)"
    (cd "$ROOT" && cargo build --release -p strait-netns-tests --bin tun-relay >&2)
fi
PATHS=(veth floor)
declare -A LABEL=([veth]="plain veth" [floor]="floor: TUN↔UDP relay, no crypto")
declare -A NOTES=()
if [[ -x $WIREGUARD_GO ]]; then
    PATHS+=(wggo)
    LABEL[wggo]="wireguard-go $("$WIREGUARD_GO" --version | head -1 | awk '{print $2}') (Debian)"
else
    NOTES[wggo]="wireguard-go skipped: $WIREGUARD_GO not found"
fi
if [[ -x $BORINGTUN_CLI ]]; then
    PATHS+=(btcli)
    LABEL[btcli]="boringtun-cli $("$BORINGTUN_CLI" --version | awk '{print $NF}'), 1 thread"
else
    NOTES[btcli]="boringtun-cli skipped: not found (set BORINGTUN_CLI or cargo install boringtun-cli)"
fi
PATHS+=(strait)
if [[ -n ${BENCH_PATHS:-} ]]; then
    wanted=()
    for p in "${PATHS[@]}"; do [[ " $BENCH_PATHS " == *" $p "* ]] && wanted+=("$p"); done
    PATHS=("${wanted[@]}")
fi
STRAIT_REV=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)
LABEL[strait]="strait ($STRAIT_REV)"
for p in "${!NOTES[@]}"; do log "${NOTES[$p]}"; done

# Starts IMPL as interface IFN in NS (a floor relay listens on PORT and
# sends to PEER); sets STARTED_PID once `wg show` (for the relay: the link)
# answers.
start_tunnel() { # IMPL NS IFN [PORT PEER]
    local impl=$1 ns=$2 ifn=$3 pid i ready
    local out=$LOGDIR/$ifn.log
    IFNAMES+=("$ifn")
    case $impl in
    wggo) ip netns exec "$ns" env WG_PROCESS_FOREGROUND=1 "$WIREGUARD_GO" -f "$ifn" >>"$out" 2>&1 & ;;
    btcli) ip netns exec "$ns" "$BORINGTUN_CLI" -f --disable-drop-privileges --threads 1 \
        --log "$out.boringtun" "$ifn" >>"$out" 2>&1 & ;;
    strait) ip netns exec "$ns" "$STRAIT_BIN" tunnel "$ifn" --foreground >>"$out" 2>&1 & ;;
    floor) ip netns exec "$ns" "$TUN_RELAY" "$ifn" "$4" "$5" >>"$out" 2>&1 & ;;
    esac
    pid=$!
    PIDS+=("$pid")
    ready=(ip netns exec "$ns" wg show "$ifn")
    [[ $impl == floor ]] && ready=(ip -n "$ns" link show "$ifn")
    for ((i = 0; i < 200; i++)); do
        if exited "$pid"; then
            log "$impl $ifn exited at start:"; tail -5 "$out" >&2; return 1
        fi
        if "${ready[@]}" >/dev/null 2>&1; then
            STARTED_PID=$pid
            return 0
        fi
        sleep 0.05
    done
    log "$impl $ifn: no UAPI answer within 10 s"
    return 1
}

stop_tunnel() { # PID NS IFN: stop; wait until the interface is gone; drop a stale socket
    stop_pid "$1"
    rm -f "/var/run/wireguard/$3.sock"
    poll 100 0.05 sh -c "! ip -n '$2' link show '$3'" || log "$3 still exists"
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
anon_kib() { awk '/^RssAnon:/ {print $2}' "/proc/$1/status"; } # private: heap, stacks
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { # sum of utime+stime of the given pids
    local pid total=0 f
    for pid in "$@"; do
        read -r -a f < <(sed 's/.*) //' "/proc/$pid/stat")
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)

# --- the namespaces -------------------------------------------------------
ip netns add "$NSA"
ip netns add "$NSB"
ip link add "sbv${RID}a" netns "$NSA" type veth peer name "sbv${RID}b" netns "$NSB"
ip -n "$NSA" addr add 192.0.2.1/24 dev "sbv${RID}a"
ip -n "$NSB" addr add 192.0.2.2/24 dev "sbv${RID}b"
for ns in "$NSA" "$NSB"; do ip -n "$ns" link set lo up; done
ip -n "$NSA" link set "sbv${RID}a" up
ip -n "$NSB" link set "sbv${RID}b" up
poll 100 0.05 ip netns exec "$NSA" ping -c1 -W1 192.0.2.2 || { log "veth does not answer"; exit 1; }

KEYA=$TMP/a.key
KEYB=$TMP/b.key
(umask 077 && wg genkey >"$KEYA" && wg genkey >"$KEYB")
PUBA=$(wg pubkey <"$KEYA")
PUBB=$(wg pubkey <"$KEYB")

TUN_PIDS=() TUN_IFS=() TUN_NS=()
# Brings up IMPL at both ends; sets SRC/DST (inner addresses) and TUN_*.
# (errexit does not apply inside `up_path || ...`: every step is checked.)
up_path() {
    local impl=$1 ns ifn side port peer_port key peer_pub self peer
    if [[ $impl == veth ]]; then
        SRC=192.0.2.1 DST=192.0.2.2
        return
    fi
    SRC=10.9.0.1 DST=10.9.0.2
    for side in a b; do
        if [[ $side == a ]]; then
            ns=$NSA port=51820 peer_port=51821 key=$KEYA peer_pub=$PUBB self=1 peer=2
        else
            ns=$NSB port=51821 peer_port=51820 key=$KEYB peer_pub=$PUBA self=2 peer=1
        fi
        ifn=sb${RID}${impl:0:1}$side
        start_tunnel "$impl" "$ns" "$ifn" "$port" "192.0.2.$peer:$peer_port" || return 1
        TUN_PIDS+=("$STARTED_PID") TUN_IFS+=("$ifn") TUN_NS+=("$ns")
        if [[ $impl != floor ]]; then
            ip netns exec "$ns" wg set "$ifn" private-key "$key" listen-port "$port" peer "$peer_pub" \
                endpoint "192.0.2.$peer:$peer_port" allowed-ips "10.9.0.$peer/32" || return 1
        fi
        ip -n "$ns" addr add "10.9.0.$self/24" dev "$ifn" || return 1
        ip -n "$ns" link set "$ifn" mtu 1420 up || return 1
    done
    # The first ping carries the handshake.
    poll 20 0.1 ip netns exec "$NSA" ping -c1 -W1 "$DST" || { log "$impl: tunnel does not pass ping"; return 1; }
}

down_path() {
    local i
    for i in "${!TUN_PIDS[@]}"; do stop_tunnel "${TUN_PIDS[$i]}" "${TUN_NS[$i]}" "${TUN_IFS[$i]}"; done
    TUN_PIDS=() TUN_IFS=() TUN_NS=()
}

# iperf3 from NSA to DST with extra client args; sets IPERF=(bits/s bytes retransmits).
iperf() {
    local port=5201 json=$TMP/iperf.json spid
    ip netns exec "$NSB" iperf3 -s -1 -B "$DST" -p "$port" >/dev/null 2>&1 &
    spid=$!
    PIDS+=("$spid")
    poll 100 0.05 sh -c "ip netns exec '$NSB' ss -Hltn 'sport = :$port' | grep -q ." \
        || { log "iperf3 server did not listen"; stop_pid "$spid"; IPERF=(nan 0 nan); return 0; }
    if ! timeout $((SECONDS_PER_RUN + 30)) ip netns exec "$NSA" iperf3 -c "$DST" -B "$SRC" -p "$port" \
        --connect-timeout 5000 -t "$SECONDS_PER_RUN" -J "$@" >"$json"; then
        log "iperf3 client failed: $(python3 -c 'import json,sys; print(json.load(sys.stdin).get("error",""))' <"$json" 2>/dev/null)"
        stop_pid "$spid"
        IPERF=(nan 0 nan)
        return 0
    fi
    poll 100 0.05 exited "$spid" || true
    stop_pid "$spid"
    read -r -a IPERF < <(python3 -c 'import json,sys; e=json.load(sys.stdin)["end"]
print(e["sum_received"]["bits_per_second"], e["sum_received"]["bytes"], e["sum_sent"].get("retransmits", "nan"))' <"$json") \
        || IPERF=(nan 0 nan)
}

# --- throughput, latency, CPU: round-robin ---------------------------------
record() { echo -e "$1\t$2\t$3\t$4" >>"$RESULTS"; } # IMPL ROUND METRIC VALUE

# Pings DST PING_COUNT times SPACING seconds apart; appends the times to
# FILE and prints how many got no answer.
ping_run() { # SPACING FILE
    timeout 120 ip netns exec "$NSA" ping -n -i "$1" -c "$PING_COUNT" -W 1 -w 60 "$DST" >"$TMP/ping.txt" || true
    sed -n 's/.*time=\([0-9.]*\) ms.*/\1/p' "$TMP/ping.txt" >>"$2"
    echo $((PING_COUNT - $(grep -c 'time=' "$TMP/ping.txt" || true)))
}

measure() { # IMPL ROUND
    local impl=$1 round=$2 c0=0 c1 pid lost
    if ! up_path "$impl"; then down_path; return 0; fi
    if [[ $impl != floor ]]; then
        [[ $impl == veth ]] || c0=$(cpu_ticks "${TUN_PIDS[@]}")
        iperf
        if [[ $impl != veth ]]; then
            c1=$(cpu_ticks "${TUN_PIDS[@]}")
            record "$impl" "$round" cpu_s_per_gb \
                "$(python3 -c "b=${IPERF[1]}; print(($c1-$c0)/$CLK_TCK/(b/1e9) if b else 'nan')")"
        fi
        record "$impl" "$round" tcp1_mbps "$(python3 -c "print(float('${IPERF[0]}')/1e6)")"
        record "$impl" "$round" tcp1_retr "${IPERF[2]}"
        iperf -P 4
        record "$impl" "$round" tcp4_mbps "$(python3 -c "print(float('${IPERF[0]}')/1e6)")"
        record "$impl" "$round" tcp4_retr "${IPERF[2]}"
    fi
    lost=$(ping_run 0.01 "$TMP/rtt-$impl.txt")
    lost=$((lost + $(ping_run "$WARM_SPACING" "$TMP/rtt-warm-$impl.txt")))
    record "$impl" "$round" ping_lost "$lost"
    if [[ $impl != floor ]]; then
        for pid in "${TUN_PIDS[@]}"; do record "$impl" "$round" hwm_kib "$(hwm_kib "$pid")"; done
    fi
    down_path
}

n=${#PATHS[@]}
for ((round = 1; round <= ROUNDS; round++)); do
    for ((k = 0; k < n; k++)); do
        impl=${PATHS[$(((k + round - 1) % n))]}
        log "round $round/$ROUNDS: $impl"
        measure "$impl" "$round"
    done
done

# --- memory: idle, then with 100 peers ----------------------------------
PEERS_ARGS=()
for ((i = 1; i <= MEM_PEERS; i++)); do
    PEERS_ARGS+=(peer "$(wg genkey | wg pubkey)" endpoint "192.0.2.2:$((52000 + i))"
        allowed-ips "10.10.$((i / 250)).$((i % 250 + 1))/32")
done
measure_memory() { # IMPL
    local impl=$1 ifn=sb${RID}${1:0:1}m pid idle idle_anon ok=1
    start_tunnel "$impl" "$NSA" "$ifn" || return 1
    pid=$STARTED_PID
    if ip netns exec "$NSA" wg set "$ifn" private-key "$KEYA" listen-port 51830 &&
        ip -n "$NSA" addr add 10.9.0.1/24 dev "$ifn" && ip -n "$NSA" link set "$ifn" mtu 1420 up; then
        idle=$(rss_kib "$pid") idle_anon=$(anon_kib "$pid")
        if ip netns exec "$NSA" wg set "$ifn" "${PEERS_ARGS[@]}" &&
            poll 100 0.05 sh -c "[ \$(ip netns exec '$NSA' wg show '$ifn' peers | wc -l) -eq $MEM_PEERS ]"; then
            record "$impl" 1 rss_idle_kib "$idle"
            record "$impl" 1 rss_peers_kib "$(rss_kib "$pid")"
            record "$impl" 1 anon_idle_kib "$idle_anon"
            record "$impl" 1 anon_peers_kib "$(anon_kib "$pid")"
            ok=0
        fi
    fi
    [[ $ok == 0 ]] || log "$impl: memory measurement failed"
    stop_tunnel "$pid" "$NSA" "$ifn"
}
for impl in "${PATHS[@]}"; do
    [[ $impl == veth || $impl == floor ]] && continue
    log "memory: $impl"
    measure_memory "$impl" || true
done

# Oddities in the daemons' logs (and strait's drop counters) go to stderr.
for f in "$LOGDIR"/*.log; do
    [[ -e $f ]] || continue
    sed -i 's/\x1b\[[0-9;]*m//g' "$f"
    if grep -qiE 'warn|error|panic' "$f"; then
        log "$(basename "$f"): $(grep -ciE 'warn|error|panic' "$f") warning/error lines, e.g.:"
        grep -iE 'warn|error|panic' "$f" | cut -c29- | sort | uniq -c | sort -rn | head -5 >&2
    fi
done
grep -h "device stopped" "$LOGDIR"/*.log 2>/dev/null | sed 's/.*device stopped/[bench] strait stopped:/' >&2 || true

# --- report -----------------------------------------------------------------
CMD="BENCH_SECONDS=$SECONDS_PER_RUN BENCH_ROUNDS=$ROUNDS netns-tests/bench-tunnel.sh"
labels=$(for p in "${PATHS[@]}"; do printf '%s\t%s\n' "$p" "${LABEL[$p]}"; done)
notes=$(for p in "${!NOTES[@]}"; do echo "${NOTES[$p]}"; done)
CMD=$CMD LABELS=$labels NOTES=$notes TMPD=$TMP SECS=$SECONDS_PER_RUN ROUNDS=$ROUNDS \
    PING_COUNT=$PING_COUNT WARM_SPACING=$WARM_SPACING MEM_PEERS=$MEM_PEERS KERNEL=$(uname -r) NPROC=$(nproc) \
    CPU=$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1) DATE=$(date -u '+%Y-%m-%d %H:%M UTC') \
    python3 - "$RESULTS" >"$TMP/report.md" <<'EOF'
import math, os, statistics as st, sys
from collections import defaultdict

E = os.environ
vals = defaultdict(list)  # (impl, metric) -> [values]
by_round = {}  # (impl, metric, round) -> value
for line in open(sys.argv[1]):
    impl, rnd, metric, v = line.rstrip("\n").split("\t")
    try:
        x = float(v)
    except ValueError:
        continue
    vals[impl, metric].append(x)
    by_round[impl, metric, int(rnd)] = x
paths = [l.split("\t") for l in E["LABELS"].splitlines()]
label = dict(paths)
order = [p for p, _ in paths]

def med(impl, metric):
    xs = [x for x in vals.get((impl, metric), []) if not math.isnan(x)]
    return st.median(xs) if xs else None

def rtt(impl, spacing=""):
    try:
        xs = sorted(float(x) * 1000 for x in open(f"{E['TMPD']}/rtt-{spacing}{impl}.txt"))
    except FileNotFoundError:
        return None, None
    if not xs:
        return None, None
    return st.median(xs), xs[max(0, math.ceil(0.99 * len(xs)) - 1)]

def f(x, fmt="{:,.0f}"):
    return "n/a" if x is None else fmt.format(x)

def ratio(a, b, pct=False):
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{100 * a / b:.0f} %" if pct else f"{a / b:.2f}×"

out = []
w = out.append
w("# Benchmarks: strait beside wireguard-go and boringtun-cli\n")
w(f"Machine: {E['CPU']}, {E['NPROC']} cores, kernel {E['KERNEL']}; run {E['DATE']}.\n")
w(f"Produced by (as root, from the repo root): `{E['CMD']}`\n")
w("Two network namespaces joined by one veth pair (192.0.2.1 ↔ 192.0.2.2); each tunnel 10.9.0.1 ↔ 10.9.0.2 "
  "(MTU 1420) runs the same implementation at both ends and is configured only with `wg set`. "
  f"Paths measured round-robin, {E['ROUNDS']} rounds (order rotated each round), each path brought up fresh per round; "
  f"figures are medians over rounds. TCP: `iperf3 -t {E['SECS']}`, receiver figure. "
  f"RTT: `ping -i 0.01 -c {E['PING_COUNT']}`, per-packet times of all rounds pooled "
  f"(the latency table adds `ping -i {E['WARM_SPACING']}`). "
  "CPU: utime+stime of both tunnel processes during the single-stream run, per GB (10⁹ bytes) received.\n")
for n in E["NOTES"].splitlines():
    w(f"- {n}")
if E["NOTES"]:
    w("")

v1 = med("veth", "tcp1_mbps"); v4 = med("veth", "tcp4_mbps"); vm, vp = rtt("veth")
w("| path | TCP 1 stream (Mbit/s) | of veth | TCP 4 streams (Mbit/s) | of veth | RTT median (µs) | RTT p99 (µs) | median − veth (µs) | p99 − veth (µs) | CPU s per GB |")
w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for p in order:
    t1, t4, (m, q) = med(p, "tcp1_mbps"), med(p, "tcp4_mbps"), rtt(p)
    veth = p == "veth"
    dm = None if veth or m is None or vm is None else m - vm
    dq = None if veth or q is None or vp is None else q - vp
    w(f"| {label[p]} | {f(t1)} | {'—' if veth else ratio(t1, v1, True)} | {f(t4)} | {'—' if veth else ratio(t4, v4, True)} "
      f"| {f(m)} | {f(q)} | {'—' if veth else f(dm, '{:+,.0f}')} | {'—' if veth else f(dq, '{:+,.0f}')} "
      f"| {'n/a' if veth else f(med(p, 'cpu_s_per_gb'), '{:.1f}')} |")
w("")

wm, wp = rtt("veth", "warm-")
w(f"Latency at two ping spacings. At 10 ms the virtual machine idles between pings and each one meets cold caches: "
  f"even the bare veth takes {f(vm)} µs. At {float(E['WARM_SPACING']) * 1000:g} ms it stays busy and the veth takes {f(wm)} µs. "
  "The floor row is two processes relaying packets between TUN and UDP with no encryption "
  "(`netns-tests/src/bin/tun-relay.rs`): what any userspace tunnel pays on this machine.\n")
w(f"| path | 10 ms: median − veth (µs) | p99 − veth (µs) | {E['WARM_SPACING']} s: median (µs) | median − veth (µs) | p99 − veth (µs) |")
w("|---|---:|---:|---:|---:|---:|")
for p in order:
    if p == "veth":
        continue
    (m, q), (n, r) = rtt(p), rtt(p, "warm-")
    diff = lambda a, b: None if a is None or b is None else a - b
    w(f"| {label[p]} | {f(diff(m, vm), '{:+,.0f}')} | {f(diff(q, vp), '{:+,.0f}')} | {f(n)} "
      f"| {f(diff(n, wm), '{:+,.0f}')} | {f(diff(r, wp), '{:+,.0f}')} |")
w("")

peers = E["MEM_PEERS"]
tunnels = [p for p in order if p not in ("veth", "floor")]
w(f"Memory (VmRSS of one device; idle = configured with a key and up, no peers; then {peers} peers with random keys, "
  "an endpoint and a /32 each; private = RssAnon, the heap and stacks, without the program's own pages, "
  "which every process running the same binary shares; peak = largest VmHWM of a tunnel process "
  "across the throughput runs):\n")
w(f"| implementation | idle (MiB) | {peers} peers (MiB) | per peer (KiB) | idle, private (MiB) | {peers} peers, private (MiB) | peak under load (MiB) |")
w("|---|---:|---:|---:|---:|---:|---:|")
mib = lambda x: f(x and x / 1024, '{:.1f}')
for p in tunnels:
    i, k = med(p, "rss_idle_kib"), med(p, "rss_peers_kib")
    hwm = max(vals.get((p, "hwm_kib"), []), default=None)
    per = None if i is None or k is None else (k - i) / int(peers)
    w(f"| {label[p]} | {mib(i)} | {mib(k)} | {f(per, '{:.1f}')} | {mib(med(p, 'anon_idle_kib'))} "
      f"| {mib(med(p, 'anon_peers_kib'))} | {mib(hwm)} |")
w("")

others = [p for p in ("wggo", "btcli") if p in order]
if "strait" in order and others:
    w("strait relative to the others (throughput: higher is better; the rest: lower is better):\n")
    w("| metric | " + " | ".join(f"strait / {label[p]}" for p in others) + " |")
    w("|---|" + "---:|" * len(others))
    rows = [("TCP 1 stream", lambda p: med(p, "tcp1_mbps")), ("TCP 4 streams", lambda p: med(p, "tcp4_mbps")),
            ("CPU s per GB", lambda p: med(p, "cpu_s_per_gb")), ("RTT median", lambda p: rtt(p)[0]),
            ("RTT p99", lambda p: rtt(p)[1]), ("RSS idle", lambda p: med(p, "rss_idle_kib")),
            (f"RSS {peers} peers", lambda p: med(p, "rss_peers_kib"))]
    for name, get in rows:
        w(f"| {name} | " + " | ".join(ratio(get("strait"), get(p)) for p in others) + " |")
    w("")

w("<details><summary>Per round</summary>\n")
w("| path | round | TCP 1 (Mbit/s) | retransmits | TCP 4 (Mbit/s) | retransmits | CPU s per GB | pings lost |")
w("|---|---:|---:|---:|---:|---:|---:|---:|")
for p in order:
    for r in range(int(E["ROUNDS"])):
        def g(m, fmt="{:,.0f}"):
            x = by_round.get((p, m, r + 1))
            return "n/a" if x is None or math.isnan(x) else f(x, fmt)
        w(f"| {label[p]} | {r + 1} | {g('tcp1_mbps')} | {g('tcp1_retr')} | {g('tcp4_mbps')} | {g('tcp4_retr')} "
          f"| {g('cpu_s_per_gb', '{:.1f}')} | {g('ping_lost')} |")
w("\n</details>")
print("\n".join(out))
EOF
# Sections other scripts own (bench-pods.sh's, from its marker on) stay.
if [ -f "$OUTPUT" ] && grep -q '^<!-- bench-pods:begin' "$OUTPUT"; then
  { cat "$TMP/report.md"; echo; sed -n '/^<!-- bench-pods:begin/,$p' "$OUTPUT"; } > "$TMP/merged.md"
  cp "$TMP/merged.md" "$OUTPUT"
else
  cp "$TMP/report.md" "$OUTPUT"
fi
cat "$TMP/report.md"
log "written to $OUTPUT"
