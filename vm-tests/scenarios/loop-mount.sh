# run-as: user
# A loop mount through the shim: an image the user made, mounted read-only with
# nosuid,nodev,noexec in the project's .locald/mounts, and unmounted again.
mkdir -p project/content
echo hello > project/content/hello.txt
mke2fs -q -F -d project/content project/disk.img 4096 2>/dev/null || {
    # busybox mke2fs has no -d: make an empty filesystem instead.
    dd if=/dev/zero of=project/disk.img bs=1024 count=4096 2>/dev/null
    mke2fs -q -F project/disk.img
}
touch project/locald.toml
cd project || exit
# ext2 images mount through the ext4 driver; the shim takes ext4, squashfs and erofs only.
locald mount disk.img --name data --fstype ext4
options=$(awk '$2 ~ /\.locald\/mounts\/data$/ {print $4}' /proc/mounts)
echo "mount options: $options"
for o in ro nosuid nodev noexec; do echo ",$options," | grep -q ",$o,"; done
# Whatever error behaviour the image's superblock asks for, the shim mounts ext4 errors=remount-ro.
device=$(awk '$2 ~ /\.locald\/mounts\/data$/ {print $1}' /proc/mounts)
grep -qx errors=remount-ro "/proc/fs/ext4/${device#/dev/}/options"
if touch .locald/mounts/data/x 2>/dev/null; then exit 1; fi
locald unmount data
test -z "$(awk '$2 ~ /\.locald\/mounts\/data$/' /proc/mounts)"
