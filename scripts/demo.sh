#!/usr/bin/env bash
# The main job (README): builds `semigrate` and runs `semigrate demo`, which installs and starts the
# local services, boots (or reuses) a real guest, starts the host workers, migrates in each mode and
# checks every page. Arguments go to `semigrate demo` (e.g. --mode semigrate --json --keep DIR).
set -euo pipefail
cd "$(dirname "$0")/.."

# ReadyToRun: the workers are fresh processes, and code compiled ahead of time takes a running
# guest's first steps (inside its downtime) without waiting for the JIT.
dotnet publish src/Workers/SEmigrate.Workers.csproj --nologo -v quiet -c Release -p:PublishReadyToRun=true -o artifacts/semigrate
exec artifacts/semigrate/semigrate demo "$@"
