# run-as: root
# Ports 80 and 443 through the shim: shim-caller drops to the unprivileged user, receives each
# listener from the shim and serves a real connection on it.
for port in 80 443; do
    out=$(shim-caller --uid "$LOCALD_TEST_UID" --gid "$LOCALD_TEST_GID" bind "$port")
    echo "$out"
    echo "$out" | grep -q "^listening=127.0.0.1:$port$"
    echo "$out" | grep -q '^accepted='
    echo "$out" | grep -q "^uid=$LOCALD_TEST_UID$"
done
