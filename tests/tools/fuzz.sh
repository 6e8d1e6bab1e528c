#!/usr/bin/env bash
# Builds husk's fuzz targets (fuzz/, cargo fuzz with AddressSanitizer,
# debug assertions and overflow checks) and runs each for a bounded time:
#   tests/tools/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
# (default 20 s each, every target). Each run starts from the committed
# corpus (fuzz/corpus/<target>) and seeds (fuzz/seeds/<target>, made by
# fuzz/seeds.py, with fuzz/dict/<target>.dict where there is one); what it
# finds beyond them goes to a temporary directory, so the tree stays as it
# is. It fails if any target crashes, panics, leaks, runs out of memory or
# spends more than 10 s on one input; the input is kept under
# fuzz/artifacts/<target>/ (see docs/fuzzing.md to reproduce and fix).
#
# cargo fuzz passes nightly-only flags (-Zsanitizer) to rustc; the stable
# toolchain accepts them with RUSTC_BOOTSTRAP=1, which this script sets
# for its own cargo runs only.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
secs=${1:-20}
shift || true
cd "$repo"

if ! command -v cargo-fuzz >/dev/null; then
    echo "fuzz.sh: cargo-fuzz is not installed (scripts/setup.sh installs it)" >&2
    exit 1
fi
export RUSTC_BOOTSTRAP=1
flags=(--debug-assertions)

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

start=$(date +%s)
echo "== fuzz: building ${#targets[@]} targets"
cargo fuzz build "${flags[@]}"
built=$(date +%s)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Files a target makes for itself (oci_plan's rootfs) go there too.
export TMPDIR="$work"
failed=()
rows=()
for t in "${targets[@]}"; do
    echo "== fuzz: $t for ${secs} s"
    mkdir -p "$work/$t" "fuzz/corpus/$t" "fuzz/seeds/$t"
    log="$work/$t.log"
    dict=()
    if [ -f "fuzz/dict/$t.dict" ]; then
        dict=(-dict="fuzz/dict/$t.dict")
    fi
    t0=$(date +%s)
    # One input at most 16 KiB (the virtqueue targets' guest RAM image),
    # 10 s, 2 GiB.
    if cargo fuzz run "${flags[@]}" "$t" "$work/$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$secs" -max_len=16384 -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 "${dict[@]}" >"$log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed+=("$t")
        tail -n 60 "$log"
    fi
    t1=$(date +%s)
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)
    found=$(find "$work/$t" -type f | wc -l)
    corpus=$(find "fuzz/corpus/$t" "fuzz/seeds/$t" -type f | wc -l)
    rows+=("$(printf '%-22s %-7s %5ss %10s %9s %8s %6s' "$t" "$status" "$((t1 - t0))" \
        "${runs:-?}" "${rate:-?}" "$corpus" "$found")")
done

end=$(date +%s)
echo
echo "== fuzz: build $((built - start)) s, runs $((end - built)) s, total $((end - start)) s"
printf '%-22s %-7s %6s %10s %9s %8s %6s\n' target result time execs execs/s corpus new
printf '%s\n' "${rows[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: failed: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
    exit 1
fi
