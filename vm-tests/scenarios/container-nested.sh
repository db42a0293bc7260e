# run-as: root
# Issue 17, finding 4: a caller confined by root to a cgroup with pids.max=10 starts a container
# that tries to fork 50 sleepers. The container's cgroup is <caller>/locald/<uid>/<id>, not the
# hierarchy's root, so the caller's limit holds inside: on cgroup v2 the caller's cgroup holds the
# caller's processes, so its child gets no controllers of its own, yet pids.max counts every task
# of the subtree. Before, the container was at /locald/<uid>/<id> and forked all 50.
uid=$LOCALD_TEST_UID
gid=$LOCALD_TEST_GID
work=/home/locald/nested
for d in bin proc dev sys tmp; do mkdir -p "$work/bundle/rootfs/$d"; done
cp /bin/busybox "$work/bundle/rootfs/bin/busybox"
for a in sh sleep; do ln -s busybox "$work/bundle/rootfs/bin/$a"; done
# Only builtins once the loop has run: every pid may be taken. `read x` waits on stdin.
# The container's shell expands it, not this one.
# shellcheck disable=SC2016
script='( i=0; while [ $i -lt 50 ]; do sleep 60 & i=$((i + 1)); echo $i > /tmp/count; done ) 2>/dev/null; read x; read n < /tmp/count; echo started=$n'
shim-caller write-bundle "$work/bundle" "$uid" "$gid" nested /bin/sh -c "$script"
chown -R "$uid:$gid" "$work"

caller=/sys/fs/cgroup/caller
mkdir "$caller"
echo 10 > "$caller/pids.max"
mkfifo /tmp/nested-go
exec 3<> /tmp/nested-go
# Root moves the caller's shell in before it becomes the user: the user cannot leave it.
sh -c "echo \$\$ > $caller/cgroup.procs; exec su -s /bin/sh locald -c '$LOCALD_SHIM bundle run --bundle $work/bundle --id nested'" \
    < /tmp/nested-go > /tmp/nested-out.txt 2>&1 &
shim=$!
nested="$caller/locald/$uid/nested"
# Ready once the caller's limit has refused a fork.
n=0
until [ "$(sed -n 's/^max //p' "$caller/pids.events" 2>/dev/null)" -gt 0 ] 2>/dev/null; do
    n=$((n + 1))
    if [ $n -ge 400 ]; then
        echo "no fork refused by the caller's pids.max within 20 s"
        cat /tmp/nested-out.txt
        find /sys/fs/cgroup/locald 2>/dev/null | head
        exit 1
    fi
    sleep 0.05
done
test -n "$(cat "$nested/cgroup.procs")"
test ! -e "/sys/fs/cgroup/locald/$uid/nested"
test "$(cat "$caller/pids.current")" -le 10
echo go >&3
wait "$shim" || true
cat /tmp/nested-out.txt
started=$(sed -n 's/^started=//p' /tmp/nested-out.txt)
test -n "$started"
test "$started" -lt 10
test ! -e "$nested"
