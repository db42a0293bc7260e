#!/usr/bin/env bash
# Registry images, same machine, same run, as one throwaway user with a subuid/subgid allocation:
#   pull   `locald pull` vs rootless `podman pull` vs `skopeo copy` + `umoci unpack --rootless`,
#          each from an empty store, from a registry on 127.0.0.1;
#   start  a service from the cached image until its process runs (`locald up` of a worker) vs
#          `podman run -d` of the same image and command (returns once the container runs);
#   disk   what each further service (container) of the same image adds, writing nothing.
# Run as root (it installs the shim setuid for the throwaway user):
#
#   sudo bench/container-images/run.sh [RUNS] [IMAGE_LAYOUT:TAG]
#
# The image is the OCI layout the privileged suite caches (Debian 12 + PostgreSQL 15, made by
# mmdebstrap and umoci, ~110 MB compressed); without it the same recipe builds it here.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-5}
image=${2:-}
work=/var/lib/locald-bench-images
user=locald-bench-img
range_start=900000

[ "$(id -u)" = 0 ] || { echo "run as root (sudo $0)" >&2; exit 1; }
for tool in podman skopeo umoci docker-registry newuidmap mmdebstrap; do
    command -v "$tool" >/dev/null || missing=1
done
[ -z "${missing:-}" ] || apt-get install -y -qq podman skopeo umoci docker-registry uidmap mmdebstrap >/dev/null
id "$user" >/dev/null 2>&1 || useradd --create-home --user-group --shell /bin/sh "$user"
uid=$(id -u "$user"); gid=$(id -g "$user")
grep -q "^$user:" /etc/subuid || usermod --add-subuids "$range_start-$((range_start + 65535))" "$user"
grep -q "^$user:" /etc/subgid || usermod --add-subgids "$range_start-$((range_start + 65535))" "$user"

if [ -z "$image" ]; then
    layout=$(find /var/cache/locald-tests -maxdepth 2 -path "*/postgres-*/layout" -type d 2>/dev/null | head -n1)
    if [ -z "$layout" ]; then
        layout=/var/cache/locald-tests/postgres-bench/layout
        build=$(dirname "$layout")
        rm -rf "$build" && mkdir -p "$build"
        mmdebstrap --quiet --variant=apt --include=postgresql-15 --format=tar bookworm "$build/rootfs.tar"
        umoci init --layout "$layout" && umoci new --image "$layout:pg"
        umoci raw add-layer --image "$layout:pg" "$build/rootfs.tar" && rm "$build/rootfs.tar"
    fi
    image="$layout:pg"
fi

cargo build --quiet --release --workspace --bins
target=$(realpath "${CARGO_TARGET_DIR:-target}")
rm -rf "$work"; mkdir -p "$work/bin" "$work/registry"
install -o root -g root -m 4755 "$target/release/locald-shim" "$work/bin/locald-shim"
install -m 0755 "$target/release/locald" "$work/bin/locald"
home="$work/home"; mkdir -p "$home" "$work/run"; chmod 0700 "$work/run"

# The registry, on loopback only, with the image pushed once.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$work/registry/config.yml" <<EOF
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $work/registry/storage}}
http: {addr: 127.0.0.1:$port}
EOF
docker-registry serve "$work/registry/config.yml" >"$work/registry/log" 2>&1 &
registry=$!
cleanup() {
    as_user "$work/bin/locald" server stop >/dev/null 2>&1 || true
    as_user podman rm -af -t 0 >/dev/null 2>&1 || true
    kill "$registry" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
ref="127.0.0.1:$port/bench/pg:1"
skopeo copy --quiet --dest-tls-verify=false "oci:$image" "docker://$ref"

chown -R "$uid:$gid" "$home" "$work/run"
# Everyone's state under $work, nothing of the user's real home; podman rootless with cgroupfs
# (no systemd session here) and its own storage.
as_user() {
    setpriv --reuid="$uid" --regid="$gid" --init-groups env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        HOME="$home" XDG_RUNTIME_DIR="$work/run" XDG_CACHE_HOME="$home/cache" \
        XDG_STATE_HOME="$home/state" XDG_CONFIG_HOME="$home/config" XDG_DATA_HOME="$home/data" \
        LOCALD_SHIM="$work/bin/locald-shim" "$@"
}
mkdir -p "$home/config/containers"
printf '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n' >"$home/config/containers/containers.conf"
printf '[[registry]]\nlocation = "127.0.0.1:%s"\ninsecure = true\n' "$port" >"$home/config/containers/registries.conf"
# Overlay storage, as rootless Podman has on a current kernel (not vfs, which copies per container).
printf '[storage]\ndriver = "overlay"\n' >"$home/config/containers/storage.conf"
chown -R "$uid:$gid" "$home"

# One project per measurement; `pull` and `up` go through the user's daemon.
project() { # dir, services...
    local dir=$1; shift
    mkdir -p "$dir"
    { printf '[project]\nname = "%s"\n' "$(basename "$dir")"
      for s in "$@"; do
          printf '\n[services.%s]\nimage = "%s"\ncommand = "sleep 100000"\nport = false\nuser = "root"\n' "$s" "$ref"
      done; } >"$dir/locald.toml"
    chown -R "$uid:$gid" "$dir"
}
project "$home/pull" db
project "$home/start" db
as_user "$work/bin/locald" status >/dev/null # starts the daemon, as a user's would already run

results="$work/results"; mkdir -p "$results"; chown "$uid:$gid" "$results"
# Interleaved rounds (each tool once per round, after its own clean-up, untimed), so a change
# of load on a shared machine moves every tool's figures alike. Seconds per run, one per line.
timed() { # name, command...
    local name=$1 t0 t1; shift
    t0=$(date +%s%N)
    "$@" >/dev/null 2>"$results/$name.err" || { echo "$name failed: $(tail -n1 "$results/$name.err")" >&2; exit 1; }
    t1=$(date +%s%N)
    echo "$(( (t1 - t0) / 1000 ))e-6" >>"$results/$name"
}

# Pulls, each into an empty store (the locald daemon keeps running: only its store and the
# project's pins go; removed as root, as the stores hold subordinate ids).
for round in $(seq 0 "$runs"); do
    rm -rf "$home/cache/locald" "$home/pull/.locald" "$home/oci" "$home/unpacked"
    as_user podman rmi -af >/dev/null 2>&1 || true
    sync
    timed "pull-locald-$round" as_user "$work/bin/locald" pull -C "$home/pull"
    sync
    timed "pull-podman-$round" as_user podman pull -q --tls-verify=false "$ref"
    sync
    timed "pull-skopeo-$round" as_user sh -c "skopeo copy --quiet --src-tls-verify=false docker://$ref oci:$home/oci:1 && umoci unpack --rootless --image $home/oci:1 $home/unpacked"
done

# Starts from the cached image: locald's writes of the last run are dropped first (down -v), as
# podman's container is removed; both images stay cached. Podman's default runtime, crun,
# refuses hybrid cgroup hosts: runc there.
as_user "$work/bin/locald" pull -C "$home/start" >/dev/null
runtime=crun
as_user podman run --rm --runtime crun --user root "$ref" true >/dev/null 2>&1 || runtime=runc
echo "podman runs containers with $runtime" >&2
for round in $(seq 0 "$runs"); do
    as_user "$work/bin/locald" down --volumes "$home/start" >/dev/null 2>&1 || true
    as_user podman rm -af -t 0 >/dev/null 2>&1 || true
    timed "start-locald-$round" as_user "$work/bin/locald" up "$home/start"
    timed "start-podman-$round" as_user podman run -d --runtime "$runtime" --user root "$ref" sleep 100000
done
as_user "$work/bin/locald" down --volumes "$home/start" >/dev/null
as_user podman rm -af -t 0 >/dev/null

# Disk: five more services (containers) of the same image, writing nothing.
project "$home/disk" s1 s2 s3 s4 s5
as_user "$work/bin/locald" up "$home/disk" >/dev/null
locald_extra=$(du -sxb "$home/disk/.locald/containers" | cut -f1)
storage=$(as_user podman info --format '{{.Store.GraphRoot}}')
before=$(du -sxb "$storage" | cut -f1)
for _ in 1 2 3 4 5; do as_user podman run -d --runtime "$runtime" --user root "$ref" sleep 100000 >/dev/null; done
after=$(du -sxb "$storage" | cut -f1)
as_user "$work/bin/locald" down --volumes "$home/disk" >/dev/null

python3 - "$results" "$runs" "$locald_extra" "$((after - before))" <<'PY'
import os, statistics, sys
d, runs = sys.argv[1], int(sys.argv[2])
def times(name):
    # Round 0 is the warm-up.
    return [float(open(os.path.join(d, f"{name}-{r}")).read()) for r in range(1, runs + 1)]
def row(what, mine, peer, peer_name):
    a, b = times(mine), times(peer)
    ratios = [x / y for x, y in zip(a, b)]
    print(f"{what:<6} locald {statistics.median(a):>7.2f} s ({min(a):.2f}-{max(a):.2f})  "
          f"{peer_name:<13} {statistics.median(b):>7.2f} s ({min(b):.2f}-{max(b):.2f})  "
          f"{statistics.median(a) / statistics.median(b):.2f}x (round ratios {min(ratios):.2f}-{max(ratios):.2f}x)")
row("pull", "pull-locald", "pull-podman", "podman pull")
row("pull", "pull-locald", "pull-skopeo", "skopeo+umoci")
row("start", "start-locald", "start-podman", "podman run -d")
print(f"disk   locald {int(sys.argv[3]) / 5 / 1024:.1f} KiB per further service; "
      f"podman {int(sys.argv[4]) / 5 / 1024:.1f} KiB per further container")
PY
