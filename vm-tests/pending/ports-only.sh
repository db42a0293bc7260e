# run-as: root
# PENDING: failed in the QEMU guest (exit 1 right after the install; cause not yet found), so it
# is kept out of vm-tests/scenarios until it passes there.
# The --ports-only install on the guest kernel: `locald admin setup --ports-only` gives the shim
# only the file capability cap_net_bind_service=ep (no setuid bit); the unprivileged user gets
# ports 80 and 443 through it, and every request beyond bind is refused naming the full install,
# with /etc/hosts left as it was.
dest=/usr/local/libexec/locald-ports
shim=$dest/locald-shim
# Without the capability the user could not bind 80 at all: a pass below means it worked.
[ "$(cat /proc/sys/net/ipv4/ip_unprivileged_port_start)" -gt 443 ]

locald admin setup --ports-only --dest "$dest"
locald admin setup --ports-only --dest "$dest" | grep -q 'already installed and current'
[ "$(stat -c '%a %u %g' "$shim")" = '755 0 0' ]
su -s /bin/sh locald -c "$shim --shim-version" | grep -qx 'mode capabilities'

for port in 80 443; do
    out=$(LOCALD_SHIM=$shim shim-caller --uid "$LOCALD_TEST_UID" --gid "$LOCALD_TEST_GID" bind "$port")
    echo "$out"
    echo "$out" | grep -q "^listening=127.0.0.1:$port$"
    echo "$out" | grep -q '^accepted='
    echo "$out" | grep -q "^uid=$LOCALD_TEST_UID$"
done

cp /etc/hosts /tmp/hosts.before
out=$(LOCALD_SHIM=$shim shim-caller --uid "$LOCALD_TEST_UID" --gid "$LOCALD_TEST_GID" raw admin sync-hosts ports.test)
echo "$out"
echo "$out" | grep -q '^exit=77$'
echo "$out" | grep -q '^stderr=.*capabilities mode.*sudo locald admin setup'
cmp /etc/hosts /tmp/hosts.before

# The user's daemon side reports the mode.
su -s /bin/sh locald -c "cd /home/locald && LOCALD_SHIM=$shim locald doctor" | grep -q '^warn  shim.mode .*capabilities'
