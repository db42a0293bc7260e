#!/usr/bin/env bash
# The proxy against nginx, in one run: the same backend (an nginx answering "hello" on one port,
# started by locald as the project's `web` service) reached directly, through nginx as a reverse
# proxy (keep-alive upstream), and through locald. wrk measures HTTP/1.1 keep-alive req/s and p99
# latency over HTTP (at CONNECTIONS and at 1,000 connections) and HTTPS, and new TLS handshakes/s
# (Connection: close); h2load measures HTTP/2 over TLS, many streams on few connections and few
# streams on many. Prints a ratio table (medians, with each ratio's spread over the rounds) and
# the resident memory each proxy adds per 1,000 idle keep-alive connections.
# Runs in a private XDG environment; nothing of the user's own daemon is touched.
#
#   bench/proxy/run.sh [SECONDS] [CONNECTIONS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-10}
conns=${2:-50}
rounds=${3:-3}
for tool in nginx wrk h2load curl openssl python3; do
    command -v "$tool" >/dev/null || { echo "bench/proxy needs $tool (apt-get install nginx wrk nghttp2-client curl openssl python3)" >&2; exit 1; }
done
# 1,000 client connections, as many to the backend, and the proxies' own: above the usual 1024.
ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge 4096 ] || { echo "bench/proxy needs an fd limit of 4096 (ulimit -Hn is $(ulimit -Hn))" >&2; exit 1; }
cargo build --quiet --release -p locald
locald=${CARGO_TARGET_DIR:-$PWD/target}/release/locald
host=bench.localhost

work=$(mktemp -d /tmp/locald-bench-proxy.XXXXXX)
chmod 755 "$work"
export XDG_RUNTIME_DIR=$work/run XDG_STATE_HOME=$work/state XDG_DATA_HOME=$work/data HOME=$work/home LOCALD_ALLOW_ROOT=1
mkdir -p "$XDG_RUNTIME_DIR" "$XDG_STATE_HOME" "$XDG_DATA_HOME" "$HOME" "$work/project" "$work/peer"
hosts_added=
# Scheduler autogroups (one CPU share per session) would decide this benchmark instead of the
# proxies: the daemon runs in a session of its own and its service, the backend, shares that one
# share with locald's proxy, while nginx daemonizes into a session and a share of its own. With
# autogroups off every thread competes alike; as root the script turns them off for the run.
autogroup=/proc/sys/kernel/sched_autogroup_enabled
autogroup_restore=
scheduling="autogroups off"
if [ -r "$autogroup" ] && [ "$(cat "$autogroup")" = 1 ]; then
    if [ -w "$autogroup" ]; then
        echo 0 >"$autogroup"
        autogroup_restore=1
    else
        scheduling="autogroups ON (not root): the backend shares locald's CPU share, locald is at a disadvantage"
        echo "note: $scheduling" >&2
    fi
fi
cleanup() {
    if [ -n "$autogroup_restore" ]; then echo 1 >"$autogroup"; fi
    if [ -f "$work/peer/nginx.pid" ]; then kill "$(cat "$work/peer/nginx.pid")" 2>/dev/null || true; fi
    "$locald" server stop >/dev/null 2>&1 || true
    if [ -n "$hosts_added" ]; then sed -i "/# locald-bench-proxy$/d" /etc/hosts; fi
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
backend_port=$(free_port)
peer_http=$(free_port)
peer_https=$(free_port)
peer_h2=$(free_port)

# nginx's common directives for a private, unprivileged-path instance.
common() { # dir
    printf 'pid %s/nginx.pid;\nerror_log %s/error.log;\n' "$1" "$1"
}
http_common() { # dir
    printf 'access_log off;\nclient_body_temp_path %s/body;\nproxy_temp_path %s/proxy;\nfastcgi_temp_path %s/fcgi;\nuwsgi_temp_path %s/uwsgi;\nscgi_temp_path %s/scgi;\n' "$1" "$1" "$1" "$1" "$1"
}

# The backend: one nginx worker answering a short body, run by locald as the service `web`.
{
    common "$work/project"
    printf 'daemon off;\nworker_processes 1;\nworker_rlimit_nofile 8192;\nevents { worker_connections 4096; }\nhttp {\n'
    http_common "$work/project"
    printf 'server { listen 127.0.0.1:%s; keepalive_requests 1000000; location / { return 200 "hello\\n"; } }\n}\n' "$backend_port"
} >"$work/project/backend.conf"
cat >"$work/project/locald.toml" <<TOML
[project]
name = "bench"

[services.web]
command = ["nginx", "-c", "$work/project/backend.conf"]
port = $backend_port
health_check = { tcp = true, interval = "50ms" }
TOML

up=$("$locald" up "$work/project")
https_port=443 http_port=80
if note=$(grep -o 'proxy on ports [0-9]* (https) and [0-9]* (http)' <<<"$up"); then
    read -r https_port http_port < <(sed -E 's/proxy on ports ([0-9]+) \(https\) and ([0-9]+) \(http\)/\1 \2/' <<<"$note")
fi

# The peer: nginx as a reverse proxy with keep-alive to the backend, HTTP and HTTPS (HTTP/1.1),
# on a self-signed certificate, with a worker per core as locald has a proxy thread per core.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj "/CN=$host" \
    -addext "subjectAltName=DNS:$host" -keyout "$work/peer/key.pem" -out "$work/peer/cert.pem" 2>/dev/null
{
    common "$work/peer"
    printf 'worker_processes auto;\nworker_rlimit_nofile 8192;\nevents { worker_connections 4096; }\nhttp {\n'
    http_common "$work/peer"
    printf 'upstream backend { server 127.0.0.1:%s; keepalive 128; }\n' "$backend_port"
    # HTTP/2 on a port of its own, so the HTTPS rows stay HTTP/1.1 as before (wrk sends no ALPN).
    printf 'server {\n listen 127.0.0.1:%s;\n listen 127.0.0.1:%s ssl;\n listen 127.0.0.1:%s ssl http2;\n' "$peer_http" "$peer_https" "$peer_h2"
    printf ' ssl_certificate %s/cert.pem;\n ssl_certificate_key %s/key.pem;\n keepalive_requests 1000000;\n' "$work/peer" "$work/peer"
    # The TLS 1.3 suite order locald uses, chosen over the client's (wrk's OpenSSL lists
    # AES-256 first): both sides then pay for the same cipher and hash.
    # TLS 1.3 as locald negotiates it with every current client: nginx 1.22 (Debian 12) otherwise
    # stops at TLS 1.2, a different and cheaper handshake for the client.
    printf ' ssl_protocols TLSv1.3;\n ssl_prefer_server_ciphers on;\n ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384;\n'
    # nginx variables, not shell ones: the single quotes are meant.
    # shellcheck disable=SC2016
    printf ' location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host $host; proxy_set_header X-Forwarded-For $remote_addr; proxy_set_header X-Forwarded-Proto $scheme; }\n}\n}\n'
} >"$work/peer/nginx.conf"
nginx -c "$work/peer/nginx.conf"

# wrk takes the TLS server name from the URL, so the name must resolve: /etc/hosts when root.
if ! getent hosts "$host" >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        echo "127.0.0.1 $host # locald-bench-proxy" >>/etc/hosts
        hosts_added=1
    else
        echo "note: $host does not resolve and this is not root; the HTTPS rows need it" >&2
    fi
fi

# Every target answers before measuring.
curl -fsS -o /dev/null "http://127.0.0.1:$backend_port/"
curl -fsS -o /dev/null -H "Host: $host" "http://127.0.0.1:$peer_http/"
curl -fsS -o /dev/null -H "Host: $host" "http://127.0.0.1:$http_port/"

# Clock ticks (user, system) used so far by every thread of the given processes.
cpu_ticks() { # pid...
    local user=0 sys=0 pid task fields
    for pid in "$@"; do
        for task in /proc/"$pid"/task/*/stat; do
            # Fields after the command name; utime and stime are the 12th and 13th of them.
            read -r -a fields < <(sed 's/.*) //' "$task")
            user=$((user + fields[11])) sys=$((sys + fields[12]))
        done
    done
    echo "$user $sys"
}
ticks_per_sec=$(getconf CLK_TCK)

# CONNECTIONS PROXY_PIDS URL [extra args] -> "req/s p99_ms user_us sys_us [!]": the last two are
# the proxy's own CPU time per request (the backend's not included), "-" for the direct row.
measure() {
    local c=$1 pids=$2 out before after
    shift 2
    # Word splitting of the pid list is meant.
    # shellcheck disable=SC2086
    before=$(if [ -n "$pids" ]; then cpu_ticks $pids; fi)
    out=$(wrk -t2 -c"$c" -d"${secs}s" --latency "$@" 2>&1)
    # shellcheck disable=SC2086
    after=$(if [ -n "$pids" ]; then cpu_ticks $pids; fi)
    python3 - "$out" "$before" "$after" "$ticks_per_sec" <<'PY'
import re, sys
text, before, after, hz = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), float(sys.argv[4])
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
total = int(re.search(r"(\d+) requests in", text).group(1))
m = re.search(r"\s99%\s+([\d.]+)(us|ms|s)\b", text)
scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
p99 = float(m.group(1)) * scale[m.group(2)] if m else float("nan")
cpu = ["-", "-"]
if before and after and total:
    cpu = [f"{(int(a) - int(b)) / hz * 1e6 / total:.1f}" for a, b in zip(after, before)]
errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", text)
print(f"{rps:.0f} {p99:.2f} {cpu[0]} {cpu[1]}" + (" !" if errors else ""))
PY
}

# CLIENTS STREAMS PROXY_PIDS URL -> the same fields from h2load (HTTP/2 over TLS, ALPN h2); h2load
# reports no percentiles, so the latency field is its mean time per request. The warm-up second
# keeps the connections' handshakes out of the measured window.
measure_h2() {
    local c=$1 m=$2 pids=$3 out before after
    shift 3
    # shellcheck disable=SC2086
    before=$(cpu_ticks $pids)
    out=$(h2load -t2 -c"$c" -m"$m" --warm-up-time=1 -D"$secs" "$@" 2>&1)
    # shellcheck disable=SC2086
    after=$(cpu_ticks $pids)
    python3 - "$out" "$before" "$after" "$ticks_per_sec" <<'PY'
import re, sys
text, before, after, hz = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), float(sys.argv[4])
rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text).group(1))
done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", text)
total, failed = int(done.group(1)), int(done.group(3)) + int(done.group(4))
m = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)\b", text)
scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
mean = float(m.group(1)) * scale[m.group(2)] if m else float("nan")
cpu = [f"{(int(a) - int(b)) / hz * 1e6 / total:.1f}" for a, b in zip(after, before)] if total else ["-", "-"]
print(f"{rps:.0f} {mean:.2f} {cpu[0]} {cpu[1]}" + (" !" if failed or "h2" not in text else ""))
PY
}

# Each row is the median of ROUNDS interleaved rounds: on a small machine one run of wrk swings
# by 10-20 % with whatever else the scheduler does, and interleaving spreads that over all of them.
many=1000
declare -A r
targets=(direct_http nginx_http locald_http direct_http1k nginx_http1k locald_http1k)
if getent hosts "$host" >/dev/null; then
    targets+=(nginx_https locald_https nginx_hs locald_hs nginx_h2m locald_h2m nginx_h2c locald_h2c)
fi
# BENCH_TARGETS="nginx_http locald_http" measures only those (a quick loop while tuning one path).
if [ -n "${BENCH_TARGETS:-}" ]; then read -r -a targets <<<"$BENCH_TARGETS"; fi
# The proxies measured for CPU: nginx's workers (not its master, not the backend) and the daemon.
nginx_pids=$(pgrep -P "$(cat "$work/peer/nginx.pid")" | tr '\n' ' ')
daemon_pid=$(pgrep -f "^$locald server start" | head -n1 || true)
run_target() { # name
    case $1 in
        direct_http) measure "$conns" "" "http://127.0.0.1:$backend_port/" ;;
        nginx_http) measure "$conns" "$nginx_pids" -H "Host: $host" "http://127.0.0.1:$peer_http/" ;;
        locald_http) measure "$conns" "$daemon_pid" -H "Host: $host" "http://127.0.0.1:$http_port/" ;;
        direct_http1k) measure "$many" "" "http://127.0.0.1:$backend_port/" ;;
        nginx_http1k) measure "$many" "$nginx_pids" -H "Host: $host" "http://127.0.0.1:$peer_http/" ;;
        locald_http1k) measure "$many" "$daemon_pid" -H "Host: $host" "http://127.0.0.1:$http_port/" ;;
        nginx_https) measure "$conns" "$nginx_pids" "https://$host:$peer_https/" ;;
        locald_https) measure "$conns" "$daemon_pid" "https://$host:$https_port/" ;;
        nginx_hs) measure "$conns" "$nginx_pids" -H "Connection: close" "https://$host:$peer_https/" ;;
        locald_hs) measure "$conns" "$daemon_pid" -H "Connection: close" "https://$host:$https_port/" ;;
        # Many streams on few connections (a browser's page), then few streams on many connections.
        nginx_h2m) measure_h2 4 100 "$nginx_pids" "https://$host:$peer_h2/" ;;
        locald_h2m) measure_h2 4 100 "$daemon_pid" "https://$host:$https_port/" ;;
        nginx_h2c) measure_h2 200 4 "$nginx_pids" "https://$host:$peer_h2/" ;;
        locald_h2c) measure_h2 200 4 "$daemon_pid" "https://$host:$https_port/" ;;
    esac
}
# Resident memory a proxy adds per 1,000 idle keep-alive connections, measured before the load
# rounds grow either heap: each connection sends one request, reads its answer and then stays
# open while the proxy's RSS is read.
rss_kb() { # pid... -> summed VmRSS in kB
    local total=0 pid
    for pid in "$@"; do total=$((total + $(awk '/VmRSS/ {print $2}' "/proc/$pid/status"))); done
    echo "$total"
}
idle_rss() { # PORT PID... -> kB added while 1,000 connections idle
    local port=$1 before after
    shift
    before=$(rss_kb "$@")
    coproc IDLE { python3 - "$port" "$host" "$many" <<'PY'
import socket, sys
port, host, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
socks = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    got = b""
    while b"hello" not in got:
        chunk = s.recv(4096)
        if not chunk:
            sys.exit("connection closed before its answer")
        got += chunk
    socks.append(s)
print("idle", flush=True)
sys.stdin.readline()
PY
    }
    read -r _ <&"${IDLE[0]}"
    after=$(rss_kb "$@")
    echo >&"${IDLE[1]}"
    wait "$IDLE_PID"
    echo $((after - before))
}
# shellcheck disable=SC2086
nginx_idle=$(idle_rss "$peer_http" $nginx_pids)
locald_idle=$(if [ -n "$daemon_pid" ]; then idle_rss "$http_port" "$daemon_pid"; fi)

for round in $(seq "$rounds"); do
    for t in "${targets[@]}"; do
        r[$t]+="$(run_target "$t");"
    done
    echo "round $round of $rounds done" >&2
done

printf '\nbench/proxy: wrk -t2 -c%s (and -c%s) -d%ss, h2load -t2 -D%s, median of %s rounds (min-max of the per-round ratio), %s, %s cores, %s; locald proxy on %s/%s\n\n' "$conns" "$many" "$secs" "$secs" "$rounds" "$(date -u +%F)" "$(nproc)" "$scheduling" "$https_port" "$http_port"
printf '| benchmark | direct | nginx | locald | locald/nginx | locald/direct |\n|---|---|---|---|---|---|\n'
row() { # label latency-name direct nginx locald  (each "rps lat user sys [!];..." per round)
    python3 - "$@" <<'PY'
import statistics, sys
label, lat, *vals = sys.argv[1:]
def runs(v):
    return [x.split() for x in v.split(";") if x]
d, n, l = (runs(v) for v in vals)
def median_run(rs):
    return sorted(rs, key=lambda x: float(x[0]))[len(rs) // 2] if rs else None
def cell(rs):
    p = median_run(rs)
    if not p:
        return "-"
    cpu = f", CPU {p[2]}+{p[3]} µs/req" if len(p) > 3 and p[2] != "-" else ""
    errors = " (errors)" if any(x[-1] == "!" for x in rs) else ""
    return f"{p[0]} req/s, {lat} {p[1]} ms{cpu}{errors}"
def ratio(a, b):
    if not a or not b:
        return "-"
    per_round = [float(x[0]) / float(y[0]) for x, y in zip(a, b)]
    med = float(median_run(a)[0]) / float(median_run(b)[0])
    return f"{med:.2f}x ({min(per_round):.2f}-{max(per_round):.2f})" if len(per_round) > 1 else f"{med:.2f}x"
print(f"| {label} | {cell(d)} | {cell(n)} | {cell(l)} | {ratio(l, n)} | {ratio(l, d)} |")
PY
}
row "HTTP/1.1 keep-alive, $conns connections" p99 "${r[direct_http]:-}" "${r[nginx_http]:-}" "${r[locald_http]:-}"
row "HTTP/1.1 keep-alive, $many connections" p99 "${r[direct_http1k]:-}" "${r[nginx_http1k]:-}" "${r[locald_http1k]:-}"
if [ -n "${r[locald_https]:-}" ]; then
    row "HTTPS keep-alive" p99 "" "${r[nginx_https]:-}" "${r[locald_https]:-}"
    row "HTTPS new handshake per request" p99 "" "${r[nginx_hs]:-}" "${r[locald_hs]:-}"
    row "HTTP/2, 4 connections x 100 streams" mean "" "${r[nginx_h2m]:-}" "${r[locald_h2m]:-}"
    row "HTTP/2, 200 connections x 4 streams" mean "" "${r[nginx_h2c]:-}" "${r[locald_h2c]:-}"
fi
printf '\nCPU = the proxy'"'"'s own user+system time per request (nginx: its workers; locald: the daemon).\n'
printf 'Idle RSS added per %s keep-alive connections: nginx %s kB, locald %s kB.\n' "$many" "$nginx_idle" "${locald_idle:--}"
if [ -n "$daemon_pid" ]; then
    printf '\nlocald daemon peak RSS after the run: %s\n' "$(awk '/VmHWM/ {print $2 " " $3}' "/proc/$daemon_pid/status")"
fi
