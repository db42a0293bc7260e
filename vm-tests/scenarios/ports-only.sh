# run-as: root
# The --ports-only install on the guest kernel: `locald admin setup --ports-only` gives the shim
# only the file capability cap_net_bind_service=ep (no setuid bit); the unprivileged user gets
# ports 80 and 443 through it, and every request beyond bind is refused naming the full install,
# with /etc/hosts left as it was.
dest=/usr/local/libexec/locald-ports
shim=$dest/locald-shim
# Without the capability the user could not bind 80 at all, here or in the fresh network
# namespace the binds below run in: a pass below means it worked.
[ "$(cat /proc/sys/net/ipv4/ip_unprivileged_port_start)" -gt 443 ]
[ "$(unshare -n cat /proc/sys/net/ipv4/ip_unprivileged_port_start)" -gt 443 ]

locald admin setup --ports-only --dest "$dest"
out=$(locald admin setup --ports-only --dest "$dest")
echo "$out"
echo "$out" | grep -q 'already installed and current'
# Not setuid, root-owned, and exactly the one capability (getcap from Debian's libcap2-bin).
[ "$(stat -c '%a %u %g' "$shim")" = '755 0 0' ]
caps=$(getcap "$shim")
echo "$caps"
[ "$caps" = "$shim cap_net_bind_service=ep" ]
out=$(su -s /bin/sh locald -c "$shim --shim-version")
echo "$out"
echo "$out" | grep -qx 'mode capabilities'

# In a fresh network namespace: 80 and 443 of the guest's own may be held by a user's daemon
# (the NixOS machine's locald.service always holds them; so does a daemon a scenario left
# running, or one that `locald server stop` has answered but that has not exited yet), and then
# the bind would fail for that reason, not for the install's.
for port in 80 443; do
    rc=0
    out=$(LOCALD_SHIM=$shim shim-caller --netns --uid "$LOCALD_TEST_UID" --gid "$LOCALD_TEST_GID" bind "$port") || rc=$?
    echo "$out"
    [ "$rc" = 0 ]
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
out=$(su -s /bin/sh locald -c "cd /home/locald && LOCALD_SHIM=$shim locald doctor") || true
echo "$out" | grep '^warn  shim.mode'
echo "$out" | grep -q '^warn  shim.mode .*capabilities'
