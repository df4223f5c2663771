# Sourced by the netns benchmark scripts (bench-pods.sh, bench-globalnet.sh):
# the clean-up of what the harness journalled, and the replacement of the
# script's own section of BENCHMARKS.md.
#
# The sourcing script sets TMP (its scratch directory), JOURNAL (the
# harness's journal of namespaces and processes) and BENCH_PID (the bench
# binary, while it runs), then: trap bench_cleanup EXIT.

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
