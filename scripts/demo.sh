#!/usr/bin/env bash
# The main job (README): installs and starts the local services, builds `semigrate` and runs it.
# Until the demo migration lands, the job is `semigrate doctor`: every service this host needs, checked.
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/services.sh up >/dev/null
dotnet build src/Workers/SEmigrate.Workers.csproj --nologo -v quiet -o artifacts/semigrate
exec artifacts/semigrate/semigrate doctor "$@"
