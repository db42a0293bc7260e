#!/usr/bin/env bash
# `locald-lima` on macOS: the native locald runs processes, but containers need Linux
# (namespaces, cgroup v2, loop devices), so this runs locald inside the Lima VM made from
# lima/locald.yaml, in the directory you are in (the profile mounts your home directory at the
# same path). The flake sets LOCALD_LIMA_PROFILE.
set -euo pipefail

instance=${LOCALD_LIMA_INSTANCE:-locald}
profile=${LOCALD_LIMA_PROFILE:-$(dirname "$0")/locald.yaml}

if ! command -v limactl >/dev/null 2>&1; then
    echo "locald-lima: runs locald in a Lima VM; install Lima, then run: limactl start --name=$instance $profile" >&2
    exit 69
fi
status=$(limactl list --format '{{.Status}}' "$instance" 2>/dev/null || true)
case $status in
    Running) ;;
    "")
        echo "locald-lima: there is no Lima instance '$instance' yet; create it with: limactl start --name=$instance $profile" >&2
        exit 69
        ;;
    *) limactl start "$instance" ;;
esac
exec limactl shell --workdir "$PWD" "$instance" locald "$@"
