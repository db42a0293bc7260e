# run-as: user
# The proxy on a real kernel, as a user sees it: `locald up` as the unprivileged user gets 443
# and 80 from the shim, the project's names resolve (through the /etc/hosts block where the
# system does not resolve *.localhost itself), and proxy-probe — trusting only `locald ca` —
# reaches the service at https://web.vmweb.localhost/ over HTTP/2, echoes a WebSocket both ways
# (HTTP/1.1 Upgrade and RFC 8441), sees the first SSE event before the stream ends, streams a
# 100 MiB upload with the daemon's memory bounded, and gets the starting, stopped and index
# pages; no certificate is issued for example.com; the CA key is 0600.
mkdir -p proj
cat > proj/locald.toml <<'TOML'
[project]
name = "vmweb"

[services.web]
command = "exec proxy-probe serve"
env = { NAME = "web" }
health_check = { tcp = true }

[services.slow]
command = "sleep 600"
health_check = { tcp = true, start_period = "10m" }
TOML
cd proj || exit
# `up` waits for every service to be healthy, and `slow` never is: it stays in the background
# while the checks run, and `down` ends it.
locald up > up.log 2>&1 &
tries=0
until locald status 2>/dev/null | grep -Eq '^vmweb +web +healthy'; do
    tries=$((tries + 1))
    test "$tries" -lt 300 || { cat up.log; exit 1; }
    sleep 0.1
done
status=$(locald status)
echo "$status"
echo "$status" | grep -q 'https://vmweb.localhost'
ca=$(locald ca)
test "$(stat -c %a "$(dirname "$ca")/ca-key.pem")" = 600
# Where the system resolves *.localhost itself (nss-myhostname on NixOS) locald writes no
# /etc/hosts block; elsewhere (this busybox guest's musl) the block is written while `up` runs.
if proxy-probe resolve locald-scenario-probe.localhost > /dev/null 2>&1; then native=yes; else native=no; fi
echo "system resolves *.localhost: $native"
if [ "$native" = no ]; then
    tries=0
    until grep -q '[[:space:]]web.vmweb.localhost$' /etc/hosts; do
        tries=$((tries + 1))
        test "$tries" -lt 300 || { cat /etc/hosts; exit 1; }
        sleep 0.1
    done
fi
site=https://web.vmweb.localhost

out=$(proxy-probe get --cacert "$ca" "$site/")
echo "$out"
echo "$out" | grep -qx 'alpn=h2'
echo "$out" | grep -qx 'status=200'
echo "$out" | grep -qx 'hello from web'
out=$(proxy-probe get --h1 --cacert "$ca" "$site/")
echo "$out" | grep -qx 'alpn=http/1.1'

out=$(proxy-probe ws --cacert "$ca" "$site/ws")
echo "$out" | grep -qx 'websocket=echoed'
out=$(proxy-probe ws --h2 --cacert "$ca" "$site/ws")
echo "$out" | grep -qx 'websocket=echoed'
out=$(proxy-probe sse --cacert "$ca" "$site/sse")
echo "$out" | grep -qx 'first-event=before-end'
echo "$out" | grep -qx 'last-event=after-release'

out=$(proxy-probe upload --cacert "$ca" "$site/upload" 100)
echo "$out" | grep -qx "uploaded=$((100 << 20))"
# The daemon (started by `up` here, by its systemd user unit on NixOS).
daemon=
for d in /proc/[0-9]*; do
    case "$(tr '\0' ' ' < "$d/cmdline" 2>/dev/null)" in
        *"locald server start"*) daemon=${d#/proc/}; break ;;
    esac
done
peak=$(awk '/^VmHWM:/ {print $2}' "/proc/$daemon/status")
echo "daemon peak RSS ${peak} KiB"
test "$peak" -lt $((60 * 1024))

out=$(proxy-probe refused --cacert "$ca" example.com)
echo "$out"
echo "$out" | grep -q '^refused='
proxy-probe get --cacert "$ca" https://slow.vmweb.localhost/ > page
cat page
grep -qx 'status=503' page
grep -q 'slow is starting' page
grep -q 'http-equiv="refresh"' page
# https://localhost/ is the index: the running projects' URLs.
proxy-probe get --cacert "$ca" https://localhost/ > page
cat page
grep -qx 'status=200' page
grep -q 'https://slow.vmweb.localhost/' page
locald stop web
proxy-probe get --cacert "$ca" "$site/" > page
cat page
grep -qx 'status=503' page
grep -q 'web is stopped' page

locald down
wait
if grep -q 'vmweb.localhost' /etc/hosts; then echo "hosts entries left after down" >&2; exit 1; fi
locald server stop
