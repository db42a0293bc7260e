# run-as: user
# `locald up` of a project with an image service: the daemon, running as the user, prepares the
# bundle, and the shim runs it in locald/<uid>/<id> below the daemon's cgroup (the root cgroup
# here) on cgroup v2 with the memory and pids limits
# written in locald.toml; `locald down` leaves neither process nor cgroup behind.
mkdir -p proj/rootfs/bin proj/rootfs/proc proj/rootfs/dev proj/rootfs/sys proj/rootfs/tmp proj/rootfs/www
cp /bin/busybox proj/rootfs/bin/busybox
for a in sh httpd; do ln -s busybox "proj/rootfs/bin/$a"; done
cat > proj/locald.toml <<'TOML'
[project]
name = "vmct"

[services.app]
image = "./rootfs"
command = "exec httpd -f -p $PORT -h /www"
memory = "48M"
pids = 16
stop_timeout = "1s"
health_check = { tcp = true }
TOML
cd proj || exit
locald up
uid=$(id -u)
cg=$(ls -d "/sys/fs/cgroup/locald/$uid"/app-*)
test "$(cat "$cg/memory.max")" = 50331648
test "$(cat "$cg/pids.max")" = 16
test -n "$(cat "$cg/cgroup.procs")"
locald down
test ! -e "$cg"
locald server stop
