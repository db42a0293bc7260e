# run-as: user
# A busybox container through the shim lands in locald/<uid>/<id> below its caller's cgroup (the
# root cgroup here, where the VM's user runs) on cgroup v2 with the memory
# and pids limits of its bundle; a fork bomb inside is held by pids.max, and everything is
# reaped when the container ends.
mkdir -p bundle/rootfs/bin bundle/rootfs/proc bundle/rootfs/dev bundle/rootfs/sys bundle/rootfs/tmp
cp /bin/busybox bundle/rootfs/bin/busybox
for a in sh cat echo sleep; do ln -s busybox "bundle/rootfs/bin/$a"; done
uid=$(id -u); gid=$(id -g)
script='sleep 2; bomb() { bomb | bomb & }; bomb 2>/dev/null; sleep 1; echo survived'
shim-caller write-bundle "$PWD/bundle" "$uid" "$gid" limits --memory 67108864 --pids 32 /bin/sh -c "$script"
"$LOCALD_SHIM" bundle run --bundle "$PWD/bundle" --id limits > out.txt 2>&1 &
shim=$!
cg="/sys/fs/cgroup/locald/$uid/limits"
# The cgroup's files exist from its mkdir on, and hold "max" until the runtime writes the limits:
# wait for the values, not for the files.
n=0
until [ "$(cat "$cg/memory.max" 2>/dev/null)" = 67108864 ] && [ "$(cat "$cg/pids.max" 2>/dev/null)" = 32 ]; do
    n=$((n + 1))
    if [ $n -ge 200 ]; then
        echo "limits not applied within 10 s: memory.max=$(cat "$cg/memory.max" 2>&1) pids.max=$(cat "$cg/pids.max" 2>&1)"
        cat out.txt
        exit 1
    fi
    sleep 0.05
done
wait "$shim" || true
cat out.txt
grep -q survived out.txt
test ! -e "$cg"
