# Sourced by the netns benchmark scripts (bench-pods.sh, bench-globalnet.sh)
# after they set ROOT: their set-up and checks, building and running the
# bench binary, the clean-up of what the harness journalled, and the
# replacement of the script's own section of BENCHMARKS.md.

# bench_setup NAME TOOL...: checks the environment (BENCH_SECONDS,
# BENCH_ROUNDS, root, the tools), defines log, makes the scratch directory
# TMP with WORK, JOURNAL and RESULTS, and cleans up on exit.
bench_setup() {
    local name=$1 tool
    shift
    SECONDS_PER_RUN=${BENCH_SECONDS:-10}
    ROUNDS=${BENCH_ROUNDS:-3}
    OUTPUT=${BENCH_OUTPUT:-$ROOT/BENCHMARKS.md}
    [[ $SECONDS_PER_RUN =~ ^[1-9][0-9]*$ && $SECONDS_PER_RUN -le 120 ]] || { echo "BENCH_SECONDS: 1..120" >&2; exit 2; }
    [[ $ROUNDS =~ ^[1-9][0-9]*$ && $ROUNDS -le 20 ]] || { echo "BENCH_ROUNDS: 1..20" >&2; exit 2; }
    [[ $(id -u) == 0 ]] || { echo "run as root" >&2; exit 2; }
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 2; }
    done
    BENCH_NAME=$name
    log() { echo "[$BENCH_NAME] $*" >&2; }
    TMP=$(mktemp -d "/tmp/$name.XXXXXX")
    WORK=${BENCH_LOG_DIR:-$TMP/work}
    JOURNAL=$TMP/journal
    RESULTS=$TMP/results.tsv
    BENCH_PID=
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}

# Only what the harness journalled: the bench binary, then the processes
# in its namespaces, then the namespaces.
bench_cleanup() {
    local rc=$? name pid
    trap - EXIT INT TERM
    if [[ -n ${BENCH_PID:-} ]] && kill -0 "$BENCH_PID" 2>/dev/null; then
        kill -TERM "$BENCH_PID" 2>/dev/null || true
        wait "$BENCH_PID" 2>/dev/null || true
    fi
    if [[ -f $JOURNAL ]]; then
        while read -r kind name _; do
            [[ $kind == netns && -e /run/netns/$name ]] || continue
            for pid in $(ip netns pids "$name" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
            ip netns del "$name" 2>/dev/null || true
        done < "$JOURNAL"
    fi
    rm -rf "$TMP"
    exit "$rc"
}

# build_and_run_bench BENCH [BIN...]: builds strait (unless STRAIT_BIN is
# set), the bench binary BENCH and the other binaries named, then runs
# BENCH for ROUNDS rounds of SECONDS_PER_RUN in WORK, its results in
# RESULTS. Sets LOAD_BEFORE, STRAIT_REV and CPU for the section.
build_and_run_bench() {
    local bench=$1 bin
    shift
    log "building strait and $bench (cargo build --release)"
    if [[ -z ${STRAIT_BIN:-} ]]; then
        (cd "$ROOT" && cargo build --release --bin strait >&2)
        STRAIT_BIN=$ROOT/target/release/strait
    fi
    local bins=(--bin "$bench")
    for bin in "$@"; do bins+=(--bin "$bin"); done
    (cd "$ROOT" && cargo build --release -p strait-netns-tests "${bins[@]}" >&2)
    export STRAIT_BIN
    log "running: $ROUNDS rounds, $SECONDS_PER_RUN s per measurement"
    mkdir -p "$WORK"
    LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
    "${CARGO_TARGET_DIR:-$ROOT/target}/release/$bench" --seconds "$SECONDS_PER_RUN" \
        --rounds "$ROUNDS" --root "$WORK" --journal "$JOURNAL" > "$RESULTS" &
    BENCH_PID=$!
    wait "$BENCH_PID"
    BENCH_PID=
    STRAIT_REV=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)
    CPU=$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)
}

# write_section MARKER FILE SECTION_FILE: puts SECTION_FILE (which starts
# with "<!-- MARKER:begin" and ends with "<!-- MARKER:end -->") in place of
# the marked section of FILE, or appends it; the rest of FILE is kept.
write_section() {
    python3 - "$@" <<'PYEOF'
import re, sys, os
marker, path = sys.argv[1], sys.argv[2]
section = open(sys.argv[3]).read().rstrip("\n") + "\n"
text = open(path).read() if os.path.exists(path) else ""
pattern = re.compile(r"<!-- " + re.escape(marker) + r":begin.*?<!-- " + re.escape(marker) + r":end -->\n?", re.S)
if pattern.search(text):
    text = pattern.sub(lambda _: section, text)
else:
    text = text.rstrip("\n") + ("\n\n" if text else "") + section
open(path + ".tmp", "w").write(text)
os.replace(path + ".tmp", path)
PYEOF
}
