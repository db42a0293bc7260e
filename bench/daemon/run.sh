#!/usr/bin/env bash
# The daemon's overhead, printed as tables:
#  (a) `locald up` of N trivial services until all are ready, against a shell script starting
#      the same processes (N = 1, 10, 100), in the same hyperfine run, with the ratio;
#  (b) the daemon's resident memory while idle with 50 services;
#  (c) `locald status --json` latency with 100 services;
#  (d) the same idle daemon as (b) with the dashboard open in headless Chromium (through
#      chromedriver), the page holding its event stream; budget: (b) + 5 MB.
# Runs in a private XDG environment; nothing of the user's own daemon is touched. As root, the
# daemon leaves 80/443 and /etc/hosts alone (LOCALD_ROOT_JOBS=0) and has no shim, so the proxy
# and the dashboard are on their fallback ports.
#
#   bench/daemon/run.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-20}
need=()
command -v hyperfine >/dev/null || need+=(hyperfine)
command -v chromedriver >/dev/null || need+=(chromium chromium-driver)
command -v certutil >/dev/null || need+=(libnss3-tools)
[ ${#need[@]} -eq 0 ] || { apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; }
cargo build --quiet --release -p locald
locald=$PWD/target/release/locald

work=$(mktemp -d /tmp/locald-bench-daemon.XXXXXX)
export XDG_RUNTIME_DIR=$work/run XDG_STATE_HOME=$work/state HOME=$work/home LOCALD_ALLOW_ROOT=1
export LOCALD_ROOT_JOBS=0 LOCALD_SHIM=/nonexistent/locald-shim
mkdir -p "$XDG_RUNTIME_DIR" "$XDG_STATE_HOME" "$HOME"
wd_pid=
trap '[ -z "$wd_pid" ] || kill "$wd_pid"; "$locald" server stop >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

# A project of N services, each `sleep` with a token unique to the bench, and the same
# processes as a shell script.
make_project() { # n
    local n=$1 dir=$work/p$1
    mkdir -p "$dir"
    : >"$dir/locald.toml"
    : >"$dir/start.sh"
    for i in $(seq 1 "$n"); do
        printf '[services.s%d]\ncommand = ["sleep", "86%03d.%d"]\nstop_timeout = "1s"\nport = false\n' "$i" "$i" "$n" >>"$dir/locald.toml"
        printf 'sleep 86%03d.%d &\n' "$i" "$n" >>"$dir/start.sh"
    done
    echo "$dir"
}

"$locald" status >/dev/null # start the daemon once, as a user's would already be running
printf '\n(a) start N trivial services until all are ready\n\n'
printf '| N | locald up (ms) | shell script (ms) | ratio | overhead (ms) |\n|---|---|---|---|---|\n'
for n in 1 10 100; do
    dir=$(make_project "$n")
    # --prepare, not --conclude: hyperfine 1.15 (Debian 12) has only the former.
    hyperfine --warmup 2 --runs "$runs" --export-json "$work/a$n.json" \
        --command-name locald --prepare "$locald down $dir >/dev/null 2>&1 || true" "$locald up $dir" \
        --command-name shell --prepare "pkill -f '^sleep 86...[.]$n\$' || true" "sh $dir/start.sh" >/dev/null 2>&1
    "$locald" down "$dir" >/dev/null 2>&1 || true
    pkill -f "^sleep 86...[.]$n\$" || true
    python3 - "$work/a$n.json" "$n" <<'PY'
import json, sys
r = {x["command"]: x["mean"] * 1000 for x in json.load(open(sys.argv[1]))["results"]}
print(f"| {sys.argv[2]} | {r['locald']:.1f} | {r['shell']:.1f} | {r['locald'] / r['shell']:.2f}x | {r['locald'] - r['shell']:.1f} |")
PY
done

daemon_pid=$(pgrep -f "^$locald server start" | head -n1)
dir=$(make_project 50)
"$locald" up "$dir" >/dev/null
sleep 2
rss=$(awk '/VmRSS/ {print $2}' "/proc/$daemon_pid/status")
printf '\n(b) daemon idle with 50 services: RSS %.1f MB (goal <= 20 MB)\n' "$(echo "$rss / 1024" | bc -l)"

# (d) WebDriver spoken with curl: a headless Chromium trusting the local CA (NSS database in
# $HOME) opens the login URL; measured once the page says its event stream is live and two
# more snapshots (one per 2 s tick) have arrived.
"$locald" trust --user-only >/dev/null
wd_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
chromedriver --port="$wd_port" >/dev/null 2>&1 &
wd_pid=$!
wd=http://127.0.0.1:$wd_port
for _ in $(seq 100); do curl -sf "$wd/status" | grep -q '"ready": *true' && break; sleep 0.1; done
session=$(curl -sS -X POST -H 'content-type: application/json' "$wd/session" -d "{\"capabilities\": {\"alwaysMatch\": {
    \"browserName\": \"chrome\", \"goog:chromeOptions\": {\"binary\": \"/usr/bin/chromium\", \"args\": [\"--headless=new\",
    \"--no-sandbox\", \"--disable-gpu\", \"--disable-dev-shm-usage\", \"--no-first-run\", \"--user-data-dir=$HOME/chromium\"]}}}}" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["value"]["sessionId"])')
script() { # JS function body -> its JSON value
    curl -sS -X POST -H 'content-type: application/json' "$wd/session/$session/execute/sync" \
        -d "$(python3 -c 'import json, sys; print(json.dumps({"script": sys.argv[1], "args": []}))' "$1")" |
        python3 -c 'import json, sys; print(json.dumps(json.load(sys.stdin)["value"]))'
}
curl -sS -X POST -H 'content-type: application/json' "$wd/session/$session/url" \
    -d "{\"url\": \"$("$locald" dashboard --print)\"}" >/dev/null
live="return document.getElementById('conn').textContent === 'live' && document.querySelectorAll('tr[data-service]').length === 50;"
for _ in $(seq 300); do [ "$(script "$live")" = true ] && break; sleep 0.1; done
[ "$(script "$live")" = true ] || { echo "(d) the dashboard did not get live with 50 rows" >&2; exit 1; }
uptime="return document.querySelector('tr[data-service] td.uptime').textContent;"
for _ in 1 2; do
    seen=$(script "$uptime")
    for _ in $(seq 100); do [ "$(script "$uptime")" != "$seen" ] && break; sleep 0.1; done
done
rss_open=$(awk '/VmRSS/ {print $2}' "/proc/$daemon_pid/status")
printf '(d) the same with the dashboard open: RSS %.1f MB (+%.1f MB; budget (b) + 5 MB)\n' \
    "$(echo "$rss_open / 1024" | bc -l)" "$(echo "($rss_open - $rss) / 1024" | bc -l)"
curl -sS -X DELETE "$wd/session/$session" >/dev/null
kill "$wd_pid"
wd_pid=
[ "$rss_open" -le $((rss + 5 * 1024)) ] || { echo "(d) over budget" >&2; exit 1; }
"$locald" down "$dir" >/dev/null

dir=$(make_project 100)
"$locald" up "$dir" >/dev/null
hyperfine --warmup 3 --runs "$((runs * 5))" --export-json "$work/c.json" "$locald status --json" >/dev/null 2>&1
python3 - "$work/c.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"][0]
print(f"\n(c) status --json with 100 services: mean {r['mean'] * 1000:.2f} ms, max {r['max'] * 1000:.2f} ms")
PY
"$locald" down "$dir" >/dev/null
