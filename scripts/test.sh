#!/usr/bin/env bash
# The test command: sets the host up (scripts/setup.sh, then the test
# fixtures and tools of tests/setup.sh), then runs the
# format and lint checks and every test of the workspace, VM tests included,
# on the system's containerd (Debian 12: 1.6); then the ctr suite and a CRI
# subset again on containerd 1.7 and 2.1 (fetched by tests/setup.sh). The restart
# tests (tests/tests/restart.rs) cover all three lines themselves.
set -euo pipefail
# One build per run: incremental state would only add gigabytes to target/.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
repo=$(cd "$(dirname "$0")/.." && pwd)
bash "$repo/scripts/setup.sh"
bash "$repo/tests/setup.sh"
cd "$repo"
echo "== the .deb and the DaemonSet image (tests/tests/install.rs installs them on a throwaway node)"
bash scripts/build-deb.sh && bash scripts/build-deploy-image.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
# The replaced agent, a test fixture behind its feature.
cargo clippy --locked -p husk-agent --features fake-agent --bins -- -D warnings
echo "== no file-level import circle"
python3 tests/tools/import_cycles.py shim/src hypervisor/src vmm/src vmm/config/src \
    config/src container/src agent/src proto/src tests/src
echo "== cargo test, every suite, on $(containerd --version)"
# Two tests at a time: each end-to-end test boots TCG VMs, and more than
# two at once on a 2-core machine only makes every guest slower.
cargo test --locked --workspace -- --test-threads=2 --skip husk_matches_runc_scenario_by_scenario
echo "== parity table (runc against husk)"
cargo test --locked -p husk-tests --test parity -- --nocapture

# The CRI scenarios that make a pod usable: start with a reachable IP,
# exec, logs, status and stats, teardown leaving nothing; under husk, with
# runc's as the oracle for the first three, the network sysctls of a
# pod under both, and the parsed plugin config.
cri_subset=(
    cri_plugin_config_has_both_handlers
    husk_pod_ip_is_reachable_from_the_host
    husk_exec_sync_returns_output_and_exit_code
    husk_container_log_is_in_cri_format
    husk_status_stats_mounts_and_resources
    husk_harness_drop_leaves_nothing
    runc_pod_ip_is_reachable_from_the_host
    runc_exec_sync_returns_output_and_exit_code
    runc_container_log_is_in_cri_format
    pod_network_sysctls_match_runc
)
for line in 1.7 2.1; do
    echo "== containerd $line: ctr_run and the CRI subset"
    HUSK_CONTAINERD=$line cargo test --locked -p husk-tests --test ctr_run -- --test-threads=2
    HUSK_CONTAINERD=$line cargo test --locked -p husk-tests --test cri -- --test-threads=2 --exact "${cri_subset[@]}"
    # husk-vm's mode selection (the shim's name) and its errors on this line.
    HUSK_CONTAINERD=$line cargo test --locked -p husk-tests --test vm_pods -- --exact bad_images_and_a_second_vm_fail_with_the_reason
done

# Every host parser of guest input, and the agent's planner, fuzzed for a
# bounded time from the committed corpus (docs/fuzzing.md).
echo "== fuzz targets, 20 s each"
bash tests/tools/fuzz.sh 20
