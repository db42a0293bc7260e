# run-as: root
# opt-in: yes
# Container start-to-exit time on cgroup v2 with every controller (crun refuses hybrid hosts,
# so this is where all three meet): the setuid shim as the test user against runc and crun as
# root, on the same busybox `true` bundle written by the daemon's generator, each runtime in its
# own cgroup. Prints `LOCALD-VM-BENCH <runtime> <mean ms> <runs>` per runtime. It passes when
# every run of all three succeeded: TCG timing is only comparable within one boot, so nothing is
# asserted on it. Opt-in (`cargo xtask vm bench-container-start`): too slow for every suite run.
runs=${LOCALD_BENCH_RUNS:-20}
uid=$LOCALD_TEST_UID
gid=$LOCALD_TEST_GID
work=/home/locald/bench
mkdir -p "$work/bundle/rootfs/bin" "$work/bundle/rootfs/proc" "$work/bundle/rootfs/dev" \
    "$work/bundle/rootfs/sys" "$work/bundle/rootfs/tmp"
cp /bin/busybox "$work/bundle/rootfs/bin/busybox"
ln -s busybox "$work/bundle/rootfs/bin/true"
shim-caller write-bundle "$work/bundle" "$uid" "$gid" bench /bin/true
# The same bundle for the peers, but their own cgroup: runtimes must not share cgroups. The
# daemon's bundle names none (the shim places it below the caller's cgroup, here the root's
# locald/<uid>/bench).
for peer in runc crun; do
    cp -a "$work/bundle" "$work/$peer"
    sed -i "s|\"linux\": {|\"linux\": { \"cgroupsPath\": \"/locald-bench/$peer\",|" "$work/$peer/config.json"
    grep -q "\"/locald-bench/$peer\"" "$work/$peer/config.json"
done
chown -R "$uid:$gid" "$work"

shim="$LOCALD_SHIM bundle run --bundle $work/bundle --id bench"
runc="/usr/sbin/runc --root /run/bench-runc run --bundle $work/runc bench"
crun="/usr/bin/crun --root /run/bench-crun run --bundle $work/crun bench"

# Microseconds of wall-clock time: busybox date has no %N, adjtimex(2) reports tv_usec.
now_us() { adjtimex | awk '/time.tv_sec/ { s = $2 } /time.tv_usec/ { u = $2 } END { printf "%d%06d\n", s, u }'; }
# user, count, command: the command `count` times in one shell (started through su for every
# runtime alike, so its cost is shared), failing on the first failed run.
repeat() {
    su -s /bin/sh "$1" -c "i=0; while [ \$i -lt $2 ]; do $3 > /dev/null || exit 1; i=\$((i + 1)); done"
}
# One probe run each, with its output shown if it fails; it doubles as the warm-up.
repeat locald 1 "$shim"
repeat root 1 "$runc"
repeat root 1 "$crun"

# Two interleaved halves, so a slow phase of the host does not land on one runtime only.
half=$((runs / 2))
t_shim=0 t_runc=0 t_crun=0
for round in 1 2; do
    start=$(now_us); repeat locald "$half" "$shim"; end=$(now_us); t_shim=$((t_shim + end - start))
    start=$(now_us); repeat root "$half" "$runc"; end=$(now_us); t_runc=$((t_runc + end - start))
    start=$(now_us); repeat root "$half" "$crun"; end=$(now_us); t_crun=$((t_crun + end - start))
    echo "bench-container-start: round $round done"
done
n=$((half * 2))
mean() { awk -v t="$1" -v n="$n" 'BEGIN { printf "%.1f", t / n / 1000 }'; }
echo "LOCALD-VM-BENCH locald-shim $(mean $t_shim) $n"
echo "LOCALD-VM-BENCH runc $(mean $t_runc) $n"
echo "LOCALD-VM-BENCH crun $(mean $t_crun) $n"
awk -v s="$t_shim" -v r="$t_runc" -v c="$t_crun" \
    'BEGIN { printf "bench-container-start: shim/runc %.2fx, shim/crun %.2fx\n", s / r, s / c }'
