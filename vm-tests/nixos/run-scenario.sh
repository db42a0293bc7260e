#!/usr/bin/env bash
# locald-scenario NAME: runs $LOCALD_SCENARIOS/NAME.sh the way the QEMU harness's init.sh does,
# as the user `locald` or as root per its `# run-as:` header, under `sh -eu`, in a fresh working
# directory, with the environment the scenarios expect (vm-tests/scenarios/README.md).
set -euo pipefail

name=$1
scenario=$LOCALD_SCENARIOS/$name.sh
if [ ! -f "$scenario" ]; then
    echo "no scenario $name in $LOCALD_SCENARIOS" >&2
    exit 2
fi
run_as=$(sed -n 's/^# run-as: //p' "$scenario" | head -n 1)
uid=$(id -u locald)
gid=$(id -g locald)
path=/run/wrappers/bin:/run/current-system/sw/bin
shim=/run/wrappers/bin/locald-shim

if [ "$run_as" = user ]; then
    dir=/home/locald/scenario-$name
    runuser -u locald -- mkdir -p "$dir"
    cd "$dir"
    exec runuser -u locald -- env -i HOME=/home/locald PATH="$path" XDG_RUNTIME_DIR="/run/user/$uid" \
        LOCALD_SHIM="$shim" LOCALD_TEST_UID="$uid" LOCALD_TEST_GID="$gid" sh -eu "$scenario"
fi
dir=/root/scenario-$name
mkdir -p "$dir"
cd "$dir"
exec env -i HOME=/root PATH="$path" LOCALD_SHIM="$shim" LOCALD_TEST_UID="$uid" LOCALD_TEST_GID="$gid" \
    sh -eu "$scenario"
