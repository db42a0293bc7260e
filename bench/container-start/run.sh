#!/usr/bin/env bash
# Container start-to-exit time: `locald-shim bundle run` against runc and crun on the same
# busybox `true` bundle, in the same run, printed as a ratio table. Run as root (it installs the
# shim setuid for a throwaway user and runs the peers as root, as they are normally run).
#
#   sudo bench/container-start/run.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-30}
work=/var/lib/locald-bench
user=locald-bench

[ "$(id -u)" = 0 ] || { echo "run as root (sudo $0)" >&2; exit 1; }
command -v hyperfine >/dev/null || { apt-get update -qq && apt-get install -y -qq hyperfine runc crun busybox-static >/dev/null; }
id "$user" >/dev/null 2>&1 || useradd --system --no-create-home --user-group --shell /usr/sbin/nologin "$user"
uid=$(id -u "$user"); gid=$(id -g "$user")

cargo build --quiet --release --workspace --bins
target=${CARGO_TARGET_DIR:-target}
rm -rf "$work"; mkdir -p "$work/bin" "$work/bundle/rootfs/bin"
install -o root -g root -m 4755 "$target/release/locald-shim" "$work/bin/locald-shim"
cp /bin/busybox "$work/bundle/rootfs/bin/"; ln -s busybox "$work/bundle/rootfs/bin/true"
mkdir -p "$work/bundle/rootfs/"{proc,dev,sys,tmp}
"$target/release/shim-caller" write-bundle "$work/bundle" "$uid" "$gid" bench /bin/true
chown -R "$uid:$gid" "$work/bundle"
# Same bundle for the peers, but their own cgroup: runtimes must not share (or freeze) each
# other's cgroups.
for peer in runc crun; do
    cp -a "$work/bundle" "$work/bundle-$peer"
    python3 -c 'import json,sys; p=sys.argv[1]; c=json.load(open(p)); c["linux"]["cgroupsPath"]=sys.argv[2]; json.dump(c, open(p, "w"))' \
        "$work/bundle-$peer/config.json" "/locald-bench/$peer"
done

# The same wrapper for every runtime, so none pays for it alone.
as_user="setpriv --reuid=$uid --regid=$gid --clear-groups"
as_root="setpriv --reuid=0 --regid=0 --clear-groups"
declare -a names=() commands=()
add() { # name, command: kept only if one probe run succeeds here
    if $2 >/dev/null 2>"$work/$1.err"; then names+=("$1"); commands+=("$2")
    else echo "skipping $1 on this host: $(tail -n1 "$work/$1.err")" >&2; fi
}
add locald-shim "$as_user $work/bin/locald-shim bundle run --bundle $work/bundle --id bench"
add runc "$as_root runc --root /run/locald-bench-runc run --bundle $work/bundle-runc bench"
add crun "$as_root crun --root /run/locald-bench-crun run --bundle $work/bundle-crun bench"

args=(--warmup 3 --runs "$runs" -N --export-json "$work/results.json")
for i in "${!names[@]}"; do args+=(--command-name "${names[$i]}" "${commands[$i]}"); done
hyperfine "${args[@]}" >/dev/null

python3 - "$work/results.json" <<'PY'
import json, sys
results = {r["command"]: r for r in json.load(open(sys.argv[1]))["results"]}
shim = results.get("locald-shim")
# Means and medians: on a shared machine one stalled run moves the mean, rarely the median.
print(f"{'runtime':<12} {'mean ms':>9} {'stddev':>8} {'median ms':>10} {'shim / runtime':>15} {'(medians)':>10}")
for name, r in results.items():
    ratio = f"{shim['mean'] / r['mean']:.2f}x" if shim else "n/a"
    ratio_median = f"{shim['median'] / r['median']:.2f}x" if shim else "n/a"
    print(f"{name:<12} {r['mean']*1e3:>9.2f} {r['stddev']*1e3:>8.2f} {r['median']*1e3:>10.2f} {ratio:>15} {ratio_median:>10}")
PY
