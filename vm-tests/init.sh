#!/bin/busybox sh
# PID 1 of the test VM: prepare a minimal Linux with cgroup v2 (all controllers delegated to
# the subtree), an unprivileged user and the setuid shim, run every scenario, print one result
# line each, power off. The harness (cargo xtask vm) reads only the LOCALD-VM-* lines.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/opt/locald:/usr/sbin:/usr/bin
# The initramfs root cannot be pivot_root'ed away from, which container runtimes do: move
# everything onto a tmpfs and continue there.
if [ ! -e /.on-tmpfs ]; then
    mkdir -p /newroot
    mount -t tmpfs -o size=768m,mode=755 tmpfs /newroot
    # usr and lib64: host programs (runc, crun) with their libraries, when the harness added them.
    for d in bin sbin etc opt scenarios lib lib64 usr home root init; do
        if [ -e "/$d" ]; then cp -a "/$d" /newroot/; fi
    done
    mkdir -p /newroot/proc /newroot/sys /newroot/dev /newroot/tmp /newroot/run
    touch /newroot/.on-tmpfs
    exec switch_root /newroot /init
fi
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /tmp /run /root
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs tmpfs /run
if grep -q locald.probe=1 /proc/cmdline; then
    echo "LOCALD-VM-PROBE-OK"
    poweroff -f
fi
mount -t cgroup2 cgroup2 /sys/fs/cgroup
# shellcheck disable=SC2013 # cgroup.controllers is one line of space-separated names
for c in $(cat /sys/fs/cgroup/cgroup.controllers); do
    echo "+$c" > /sys/fs/cgroup/cgroup.subtree_control
done
ip link set lo up
while read -r module; do insmod "/lib/modules/$module"; done < /lib/modules/order

printf 'root:x:0:0::/root:/bin/sh\nlocald:x:1000:1000::/home/locald:/bin/sh\n' > /etc/passwd
printf 'root:x:0:\nlocald:x:1000:\n' > /etc/group
# A plain /etc/hosts as a distribution ships it: the guest's resolver (musl) knows no *.localhost
# names of its own, so locald's names come from the block the shim keeps here.
printf '127.0.0.1 localhost\n::1 localhost\n' > /etc/hosts
# No network, so no DNS server answers: fail fast instead of musl's default 5 s x 2 attempts.
printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' > /etc/resolv.conf
mkdir -p /home/locald && chown 1000:1000 /home/locald
mkdir -p /usr/local/libexec/locald
cp /opt/locald/locald-shim /usr/local/libexec/locald/locald-shim
chown 0:0 /usr/local/libexec/locald/locald-shim
chmod 4755 /usr/local/libexec/locald/locald-shim
# Debian's newuidmap/newgidmap as the uidmap package installs them (the initramfs copies lose
# the setuid bit).
chmod 4755 /usr/bin/newuidmap /usr/bin/newgidmap

echo "LOCALD-VM-KERNEL $(uname -r)"
echo "LOCALD-VM-CGROUP-CONTROLLERS $(cat /sys/fs/cgroup/cgroup.controllers)"
export LOCALD_SHIM=/usr/local/libexec/locald/locald-shim LOCALD_TEST_UID=1000 LOCALD_TEST_GID=1000
for scenario in /scenarios/*.sh; do
    name=$(basename "$scenario" .sh)
    run_as=$(sed -n 's/^# run-as: //p' "$scenario" | head -n 1)
    echo "LOCALD-VM-BEGIN $name"
    if [ "$run_as" = user ]; then
        timeout 120 su -s /bin/sh locald -c "cd /home/locald && env PATH=$PATH LOCALD_SHIM=$LOCALD_SHIM sh -eu $scenario"
    else
        (cd /root && timeout 120 sh -eu "$scenario")
    fi
    rc=$?
    if [ "$rc" = 0 ]; then echo "LOCALD-VM-RESULT $name PASS"; else echo "LOCALD-VM-RESULT $name FAIL $rc"; fi
done
echo "LOCALD-VM-DONE"
poweroff -f
