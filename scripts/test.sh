#!/usr/bin/env bash
# The test command (README, .ci/run): installs and starts the services the tests need, builds the
# solution with warnings as errors, runs every test project, and ends with one summary line.
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/services.sh up >/dev/null
dotnet build SEmigrate.sln --nologo -v quiet

log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
dotnet test --solution SEmigrate.sln --no-build 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e

count() { grep -E "^\s+$1: [0-9]+" "$log" | tail -n 1 | grep -oE '[0-9]+' || echo 0; }
echo "tests: $(count succeeded) passed, $(count failed) failed, $(count skipped) skipped"
exit "$rc"
