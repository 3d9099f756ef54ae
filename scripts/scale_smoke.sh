#!/usr/bin/env bash
# Replicas behind HAProxy under load (deploy/compose.scale.yaml), on a real Docker engine:
#   1. up: SERVE_REPLICAS (2) replicas of `serve` and the load balancer on one port;
#   2. wrk for 20 s; meanwhile `docker stop` one replica (SIGTERM: it drains) and start it again:
#      no request may fail;
#   3. wrk for 20 s; meanwhile `docker kill` one replica: at most the requests in flight on it
#      fail, HAProxy takes it out within its check interval; it is started again, comes back
#      into the pool and takes load.
# Prints the figures; exits non-zero (with the services' logs) on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
project=eirscale$$
port=${SMOKE_PORT:-18100}
duration=${SCALE_DURATION_S:-20}
conns=${SCALE_CONNECTIONS:-16}
export EIR_SERVE_PORT=$port SERVE_REPLICAS=${SERVE_REPLICAS:-2} N_EPOCHS=${N_EPOCHS:-3}  # the model's quality is not under test
work=$(mktemp -d)
dc() { docker compose -p "$project" -f compose.yaml -f deploy/compose.scale.yaml "$@"; }
cleanup() { dc down -v >/dev/null 2>&1 || true; rm -rf "$work"; }
fail() {
  echo "scale smoke: FAILED: $*" >&2
  dc logs --no-color --tail 60 >&2 || true
  cleanup; exit 1
}
trap 'fail "interrupted"' INT TERM

if ! command -v wrk >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
  else
    echo "scale smoke: needs wrk (sudo apt-get install wrk)" >&2; exit 1
  fi
fi

# HAProxy's view of its server slots, one line each: "slot address status in-flight sessions
# answered redispatched" (address "-" when the slot is empty; answered: responses of any status;
# redispatched: sent to another replica after its connection to this one failed).
lb_servers() {
  docker exec "$(dc ps -q lb)" python3 -c '
import csv, io, urllib.request
rows = csv.DictReader(io.StringIO(urllib.request.urlopen("http://127.0.0.1:8404/stats;csv").read().decode().lstrip("# ")))
for r in rows:
    if r["pxname"] == "serve" and r["svname"] != "BACKEND":
        answered = sum(int(r[k] or 0) for k in ("hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other"))
        print(r["svname"], r["addr"].split(":")[0] or "-", r["status"].split()[0], r["scur"], r["stot"], answered,
              r["wredis"], r["srv_abrt"] or 0)'
}
since() { awk -v a="$(date +%s.%N)" -v b="$1" 'BEGIN {printf "%.2f", a - b}'; }
ip_of() { docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$1"; }
n_up() { lb_servers | awk '$3 == "UP"' | wc -l; }
wait_up() {  # wait_up N SECONDS: until N replicas are UP in HAProxy
  for _ in $(seq $(( $2 * 5 ))); do [ "$(n_up 2>/dev/null || echo 0)" -ge "$1" ] && return 0; sleep 0.2; done
  return 1
}
# wrk_run SECONDS NAME: load /predict; the summary goes to $work/NAME.txt
wrk_run() { wrk -t2 -c"$conns" -d"$1"s --timeout 10s -s "$work/post.lua" "http://127.0.0.1:$port/predict" >"$work/$2.txt" 2>&1; }
requests() { awk '/requests in/ {print $1}' "$work/$1.txt"; }
failures() {  # non-2xx answers plus socket errors (connect, read, write, timeout)
  awk '/Non-2xx/ {n += $NF} /Socket errors/ {gsub(",", ""); n += $4 + $6 + $8 + $10} END {print n + 0}' "$work/$1.txt"
}

t0=$(date +%s)
dc build >"$work/build.log" 2>&1 || { cat "$work/build.log" >&2; fail "build"; }
# In steps, each waited for here: training (minutes on a busy machine) outlasts compose's own wait.
dc up train >"$work/train.log" 2>&1 || { tail -20 "$work/train.log" >&2; fail "training"; }
dc up -d --no-deps serve >"$work/up.log" 2>&1 || { cat "$work/up.log" >&2; fail "compose up serve"; }
for _ in $(seq 180); do
  healthy=$(for c in $(dc ps -q serve); do docker inspect -f '{{.State.Health.Status}}' "$c"; done | grep -c '^healthy$' || true)
  [ "$healthy" -eq "$SERVE_REPLICAS" ] && break
  sleep 1
done
[ "$healthy" -eq "$SERVE_REPLICAS" ] || fail "$healthy of $SERVE_REPLICAS replicas healthy"
dc up -d --no-deps lb >>"$work/up.log" 2>&1 || { cat "$work/up.log" >&2; fail "compose up lb"; }
wait_up "$SERVE_REPLICAS" 180 || fail "the load balancer did not see $SERVE_REPLICAS ready replicas"
echo "scale smoke: $SERVE_REPLICAS replicas ready behind HAProxy on :$port ($(( $(date +%s) - t0 )) s with build)"

python3 - "$port" "$work/post.lua" <<'PY' || fail "request body"
import base64, json, sys, urllib.request
port, out = sys.argv[1], sys.argv[2]
info = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/info"))
n = 1
for s in info["inputs"]["mnist"]["shape"]:
    n *= s
body = json.dumps([{"mnist": base64.b64encode(bytes((i * 37) % 256 for i in range(n))).decode()}])
open(out, "w").write(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = {json.dumps(body)}\n')
PY
replicas=($(dc ps -q serve))
[ "${#replicas[@]}" -eq "$SERVE_REPLICAS" ] || fail "expected $SERVE_REPLICAS serve containers, found ${#replicas[@]}"

# --- graceful stop under load ---------------------------------------------------------------
wrk_run "$duration" graceful &
wrk_pid=$!
sleep 5
victim=${replicas[0]}
ts=$(date +%s.%N)
docker stop -t 40 "$victim" >/dev/null
stop_s=$(since "$ts")
sleep 2
docker start "$victim" >/dev/null
wait "$wrk_pid" || fail "wrk (graceful phase)"
g_req=$(requests graceful); g_fail=$(failures graceful)
echo "scale smoke: graceful stop: $g_req requests in ${duration} s, $g_fail failed; docker stop took $stop_s s"
[ "$g_fail" -eq 0 ] || { cat "$work/graceful.txt"; fail "$g_fail requests failed across a graceful stop"; }
wait_up "$SERVE_REPLICAS" 120 || fail "the stopped replica did not come back"

# --- kill under load ------------------------------------------------------------------------
wrk_run "$duration" kill &
wrk_pid=$!
sleep 5
victim=${replicas[1]}
vip=$(ip_of "$victim")
slot=$(lb_servers | awk -v ip="$vip" '$2 == ip {print $1}')
[ -n "$slot" ] || fail "no HAProxy server slot for $vip"
# Sessions that ended without an answer (and were not redispatched): the ones still open (scur)
# are not counted, or those in flight when the base is read would be subtracted from the result.
unanswered() { lb_servers | awk -v s="$slot" '$1 == s {print $5 - $6 - $7 - $4}'; }
# Sessions the server broke off (srv_abrt): the unanswered ones, and also answers it had begun,
# whose status line HAProxy already counted among the answered.
aborted() { lb_servers | awk -v s="$slot" '$1 == s {print $8}'; }
base=$(unanswered)
base_aborted=$(aborted)
docker kill "$victim" >/dev/null
tk=$(date +%s.%N)
out_s=""
for _ in $(seq 100); do
  st=$(lb_servers | awk -v s="$slot" '$1 == s {print $3}')
  if [ "$st" != UP ]; then out_s=$(since "$tk"); break; fi
  sleep 0.05
done
[ -n "$out_s" ] || fail "HAProxy still routes to the killed replica after 5 s"
wait "$wrk_pid" || fail "wrk (kill phase)"
k_req=$(requests kill); k_fail=$(failures kill)
# In flight on the killed replica: the sessions HAProxy sent to it that got no answer and were not
# redispatched, and those whose answer it broke off after its status line (counted once it has left
# the pool, so no new ones start). HAProxy's counters tell neither set exactly (srv_abrt also counts
# most unanswered ones), so the failures are checked against their sum, and each against the
# number of connections.
unanswered_n=$(( $(unanswered) - base ))
cut_off=$(( $(aborted) - base_aborted ))
in_flight=$(( unanswered_n + cut_off ))
echo "scale smoke: kill: $k_req requests in ${duration} s, $k_fail failed; on the killed replica" \
     "$unanswered_n unanswered and $cut_off broken off;" \
     "out of HAProxy's pool $out_s s after the kill (checks every 1 s, out after 2)"
[ "$k_fail" -le "$in_flight" ] || { cat "$work/kill.txt"; fail "$k_fail failed > $in_flight in flight on the killed replica"; }
for n in "$unanswered_n" "$cut_off"; do
  [ "$n" -le "$conns" ] || fail "more requests in flight ($n) than connections ($conns)"
done
awk -v s="$out_s" 'BEGIN {exit !(s <= 3.0)}' || fail "taken out after ${out_s} s, more than the check interval allows"

# --- it comes back and takes load -----------------------------------------------------------
docker start "$victim" >/dev/null
tb=$(date +%s)
wait_up "$SERVE_REPLICAS" 120 || fail "the killed replica did not come back"
back_s=$(( $(date +%s) - tb ))
vip=$(ip_of "$victim")
slot=$(lb_servers | awk -v ip="$vip" '$2 == ip {print $1}')
before=$(lb_servers | awk -v s="$slot" '$1 == s {print $6}')
wrk_run 5 back
after=$(lb_servers | awk -v s="$slot" '$1 == s {print $6}')
b_req=$(requests back); b_fail=$(failures back)
echo "scale smoke: the killed replica back in the pool ${back_s} s after its restart; then it answered" \
     "$(( after - before )) of $b_req requests in 5 s; $b_fail failed"
[ $(( after - before )) -gt 0 ] || fail "the restarted replica takes no load"
[ "$b_fail" -eq 0 ] || fail "$b_fail requests failed after the replica came back"
cleanup
echo "scale smoke: OK"
