#!/usr/bin/env bash
# The test command: sets the host up (scripts/setup.sh), then runs the
# format and lint checks and every test of the workspace, VM tests included.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bash "$repo/scripts/setup.sh"
cd "$repo"
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
echo "== cargo test"
# Two tests at a time: each end-to-end test boots TCG VMs, and more than
# two at once on a 2-core machine only makes every guest slower.
cargo test --locked --workspace -- --test-threads=2 --skip husk_matches_runc_scenario_by_scenario
echo "== parity table (runc against husk)"
cargo test --locked -p husk-tests --test parity -- --nocapture
