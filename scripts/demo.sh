#!/usr/bin/env bash
# The main job: sets the host up (scripts/setup.sh), then boots a husk
# micro-VM, prints what its agent reports and stops it.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bash "$repo/scripts/setup.sh"
"$repo/target/debug/husk" boot
