#!/usr/bin/env bash
# `locald` on macOS. The daemon needs Linux (pidfds, cgroup v2, namespaces, loop devices), so this
# runs the real locald inside the Lima VM made from lima/locald.yaml, in the directory you are in
# (the profile mounts your home directory at the same path). The flake sets LOCALD_LIMA_PROFILE.
set -euo pipefail

instance=${LOCALD_LIMA_INSTANCE:-locald}
profile=${LOCALD_LIMA_PROFILE:-$(dirname "$0")/locald.yaml}

if ! command -v limactl >/dev/null 2>&1; then
    echo "locald: on macOS locald runs in a Lima VM; install Lima, then run: limactl start --name=$instance $profile" >&2
    exit 69
fi
status=$(limactl list --format '{{.Status}}' "$instance" 2>/dev/null || true)
case $status in
    Running) ;;
    "")
        echo "locald: there is no Lima instance '$instance' yet; create it with: limactl start --name=$instance $profile" >&2
        exit 69
        ;;
    *) limactl start "$instance" ;;
esac
exec limactl shell --workdir "$PWD" "$instance" locald "$@"
