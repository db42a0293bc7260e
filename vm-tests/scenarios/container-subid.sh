# run-as: root
# Issue 20 on the guest kernel: a throwaway user with a /etc/subuid and /etc/subgid allocation
# runs `locald up` of an image whose user is uid 101 (busybox, its own /etc/passwd). The
# process's host uid is the subordinate uid start + 100, and what it writes into its read-write
# volume on ext4 (idmapped by the shim) is the user's own on the host, removable without root.
# A second volume on the guest's tmpfs, which Linux < 6.3 cannot idmap, is a plain bind: the
# service still runs, its log says so, and its file belongs to the subordinate uid.
name=subown
uid=1001
start=200000
echo "$name:x:$uid:$uid::/home/$name:/bin/sh" >> /etc/passwd
echo "$name:x:$uid:" >> /etc/group
echo "$name:$start:65536" > /etc/subuid
echo "$name:$start:65536" > /etc/subgid
chmod 644 /etc/subuid /etc/subgid
home=/home/$name
mkdir -p "$home/proj/data" "$home/proj/plain" "$home/proj/rootfs/bin" "$home/proj/rootfs/etc" "$home/proj/rootfs/www"
for d in proc dev sys tmp data plain; do mkdir -p "$home/proj/rootfs/$d"; done
cp /bin/busybox "$home/proj/rootfs/bin/busybox"
for a in sh httpd id touch; do ln -s busybox "$home/proj/rootfs/bin/$a"; done
printf 'root:x:0:0::/root:/bin/sh\napp:x:101:102::/www:/bin/sh\n' > "$home/proj/rootfs/etc/passwd"
printf 'root:x:0:\napp:x:102:\n' > "$home/proj/rootfs/etc/group"
cat > "$home/proj/locald.toml" <<'TOML'
[project]
name = "vmsub"

[services.app]
image = "./rootfs"
user = "app"
volumes = ["./data:/data", "./plain:/plain"]
command = "id -u > /data/id && touch /data/made /plain/made && exec httpd -f -p $PORT -h /www"
stop_timeout = "1s"
health_check = { tcp = true }
TOML
# ext2 made by busybox, mounted through the ext4 driver, which can idmap.
dd if=/dev/zero of=/root/subid-data.img bs=1024 count=4096 2>/dev/null
mke2fs -q -F /root/subid-data.img > /dev/null
mount -o loop -t ext4 /root/subid-data.img "$home/proj/data"
rmdir "$home/proj/data/lost+found"
chown -R "$uid:$uid" "$home"
# Without idmapping only the directory's mode lets uid 101 write there.
chmod 777 "$home/proj/plain"
as_user() {
    su -s /bin/sh "$name" -c "cd $home/proj && env PATH=$PATH LOCALD_SHIM=$LOCALD_SHIM $*"
}
as_user locald up
cg=$(ls -d "/sys/fs/cgroup/locald/$uid"/app-*)
pids=$(cat "$cg/cgroup.procs")
test -n "$pids"
for pid in $pids; do
    # Real, effective, saved and filesystem uid: the subordinate uid of container uid 101.
    grep '^Uid:' "/proc/$pid/status"
    test "$(awk '/^Uid:/ { print $2 ":" $3 ":" $4 ":" $5 }' "/proc/$pid/status")" = "200100:200100:200100:200100"
done
test "$(cat "$home/proj/data/id")" = 101
# Written by uid 101 through the idmapped volume: the user's on the host, not 200100's.
stat -c '%u:%g %n' "$home/proj/data/made"
test "$(stat -c %u:%g "$home/proj/data/made")" = "$uid:$uid"
as_user rm data/made
stat -c '%u:%g %n' "$home/proj/plain/made"
test "$(stat -c %u:%g "$home/proj/plain/made")" = "200100:200101"
as_user locald logs app > /root/subid-app.log
grep "plain: its filesystem cannot be idmapped (EINVAL: Invalid argument); files the container's user writes there belong to your subordinate uid 200100" /root/subid-app.log
test ! -e "$home/proj/data/made"
as_user locald down
test ! -e "$cg"
as_user locald server stop
umount "$home/proj/data"
