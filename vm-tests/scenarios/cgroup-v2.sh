# run-as: root
# cgroup v2 with controllers: a subtree delegated to the user works, and cgroup.kill ends a
# whole process tree.
grep -qw memory /sys/fs/cgroup/cgroup.controllers
grep -qw pids /sys/fs/cgroup/cgroup.controllers
grep -qw cpu /sys/fs/cgroup/cgroup.controllers

# Delegation: the user owns a subtree and can make and use cgroups in it.
mkdir /sys/fs/cgroup/user-1000
chown -R "$LOCALD_TEST_UID:$LOCALD_TEST_GID" /sys/fs/cgroup/user-1000
su -s /bin/sh locald -c 'echo "+pids +memory" > /sys/fs/cgroup/user-1000/cgroup.subtree_control; mkdir /sys/fs/cgroup/user-1000/svc; echo 20 > /sys/fs/cgroup/user-1000/svc/pids.max'
test "$(cat /sys/fs/cgroup/user-1000/svc/pids.max)" = 20

# cgroup.kill: a tree of sleeps in one cgroup, gone after one write.
mkdir /sys/fs/cgroup/killme
sh -c 'echo $$ > /sys/fs/cgroup/killme/cgroup.procs; sleep 1000 & sleep 1000 & wait' &
while [ "$(wc -l < /sys/fs/cgroup/killme/cgroup.procs)" -lt 3 ]; do sleep 0.05; done
echo 1 > /sys/fs/cgroup/killme/cgroup.kill
n=0
while [ -s /sys/fs/cgroup/killme/cgroup.procs ]; do n=$((n + 1)); [ $n -lt 100 ] || exit 1; sleep 0.05; done
# cgroup.procs no longer lists a task that has begun to exit, but the cgroup stays populated (and
# rmdir fails with EBUSY) until every task has finished exiting: cgroup.events says when.
n=0
until grep -qx 'populated 0' /sys/fs/cgroup/killme/cgroup.events; do n=$((n + 1)); [ $n -lt 100 ] || exit 1; sleep 0.05; done
rmdir /sys/fs/cgroup/killme
