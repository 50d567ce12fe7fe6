#!/usr/bin/env bash
# Runs the pipeline locally on embedded defaults: a tansu broker with sqlite
# storage under .local/, the topics (`processors topics apply`), ingest with
# deploy/config/ingest.local.toml, the processors and the live venue view
# (deploy/config/venues.local.toml). Prints a curl line that sends a correctly
# signed example event. Ctrl-C stops everything.
#
# Unless DEMO_EVENTS=0, it then plays a short demo stream through ingest
# (the provider simulator: several venues, duplicates, out-of-order
# deliveries, 5% of webhooks lost on purpose), runs `ingest poll` against
# the simulator's history API, which recovers the lost ones, and prints
# what the analytics store holds.
#
# Settings (environment): LOCAL_STACK_PROFILE (release; debug: the test
# suite's build), KAFKA_PORT (9092), INGEST_PORT (8080), VENUES_PORT (8090),
# DATA_DIR (.local), PURPLE_WEBHOOK_SECRET (local-demo-secret),
# DEMO_EVENTS (300), PROVIDER_API_PORT (8081), POLLER_METRICS_PORT (9464),
# PURPLE_API_TOKEN (local-demo-api-token), ANALYTICS_DATABASE_URL (unset: the embedded analytics
# store in $DATA_DIR/analytics.db; set to a postgres:// URL to use PostgreSQL).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$HOME/.cargo/bin:$PATH"
kafka_port=${KAFKA_PORT:-9092}
ingest_port=${INGEST_PORT:-8080}
data=${DATA_DIR:-$root/.local}
export PURPLE_WEBHOOK_SECRET=${PURPLE_WEBHOOK_SECRET:-local-demo-secret}
export PURPLE_API_TOKEN=${PURPLE_API_TOKEN:-local-demo-api-token}
api_port=${PROVIDER_API_PORT:-8081}
poller_port=${POLLER_METRICS_PORT:-9464}
# ingest.local.toml's poll table names the simulator's API on :8081.
export INGEST_SOURCES__PURPLE__POLL__URL="http://127.0.0.1:$api_port/api/v1/events"
export INGEST_SOURCES__PURPLE__POLL__RANGE_URL="http://127.0.0.1:$api_port/api/v1/venues/{key}/events"
export INGEST_POLLER__METRICS_LISTEN="127.0.0.1:$poller_port"
mkdir -p "$data/tansu"

"$root/deploy/install-tansu.sh"
profile=${LOCAL_STACK_PROFILE:-release}
case "$profile" in
  release) build_flag=--release ;;
  debug) build_flag= ;;
  *) echo "LOCAL_STACK_PROFILE: $profile is not release or debug" >&2; exit 2 ;;
esac
bin="$root/target/$profile"
# librdkafka is built with TLS against Debian's OpenSSL and with libcurl
# (OAUTHBEARER's OpenID Connect): their headers and pkg-config must be there.
if ! { command -v pkg-config >/dev/null 2>&1 && pkg-config --exists openssl && pkg-config --exists libcurl; }; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: pkg-config libssl-dev libcurl4-openssl-dev (run as root, or apt-get install them)" >&2
    exit 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends pkg-config libssl-dev libcurl4-openssl-dev >/dev/null
fi
echo "building ingest, processors and venues ($profile)..." >&2
cargo build $build_flag --locked -p ingest --bin ingest -p processors --bin processors \
  -p venues --bin venues

# Each service runs in its own session (setsid), so Ctrl-C reaches only
# this script, which then stops them in order: ingest first (no new
# webhooks), then the processors (they hand over and commit while the
# broker is still up), then the broker. Each gets a bounded time.
broker_pid="" ingest_pid="" processors_pid="" venues_pid="" provider_pid="" poller_pid=""
alive() {
  local state
  state=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}
stop() { # pid name seconds
  [ -n "$1" ] || return 0
  kill -TERM "$1" 2>/dev/null || return 0
  for _ in $(seq 1 $(($3 * 10))); do
    alive "$1" || { wait "$1" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  echo "$2 did not stop within $3 s; killing it" >&2
  kill -KILL "$1" 2>/dev/null || true
}
cleanup() {
  trap - EXIT INT TERM
  stop "$provider_pid" "the provider simulator" 10
  stop "$poller_pid" "ingest poll" 15
  stop "$ingest_pid" ingest 15
  stop "$venues_pid" venues 10
  stop "$processors_pid" processors 40
  stop "$broker_pid" tansu 10
}
trap cleanup EXIT INT TERM

broker="tcp://127.0.0.1:$kafka_port"
(cd "$data/tansu" && exec setsid tansu broker --storage-engine sqlite://tansu.db \
  --listener-url "$broker" --advertised-listener-url "$broker") >"$data/tansu.log" 2>&1 &
broker_pid=$!
for _ in $(seq 1 100); do
  (echo >"/dev/tcp/127.0.0.1/$kafka_port") 2>/dev/null && break
  sleep 0.1
done
# Every topic the pipeline uses, as deploy/config/processors.local.toml
# defines them ([topics]), and the poller's topics named in ingest's config
# (--ingest-config): created when missing; an existing topic that
# differs (data from an older version of this script) is reported and left
# as it is (exit 1, or 4 when the broker does not report a setting).
topics_rc=0
PROCESSORS_KAFKA__BROKERS="127.0.0.1:$kafka_port" "$bin/processors" topics apply \
  --config "$root/deploy/config/processors.local.toml" \
  --ingest-config "$root/deploy/config/ingest.local.toml" || topics_rc=$?
case "$topics_rc" in
  0) ;;
  1|4) echo "topics: not all as defined (above); left as they are" >&2 ;;
  *) echo "topics: processors topics apply failed (exit $topics_rc)" >&2; exit 1 ;;
esac

export INGEST_KAFKA__BROKERS="127.0.0.1:$kafka_port"
export INGEST_SERVER__LISTEN="127.0.0.1:$ingest_port"
setsid "$bin/ingest" serve --config "$root/deploy/config/ingest.local.toml" \
  > "$data/ingest.out" 2> >(tee "$data/ingest.log" >&2) &
ingest_pid=$!
for _ in $(seq 1 100); do
  grep -q "listening on" "$data/ingest.out" 2>/dev/null && break
  sleep 0.1
done
grep -q "listening on" "$data/ingest.out" || { echo "ingest did not start; see $data/ingest.log" >&2; exit 1; }

metrics_port=${PROCESSORS_METRICS_PORT:-9100}
export PROCESSORS_KAFKA__BROKERS="127.0.0.1:$kafka_port"
export PROCESSORS_METRICS__LISTEN="127.0.0.1:$metrics_port"
export PROCESSORS_DEDUPE__PATH="$data/processors/dedupe.redb"
export PROCESSORS_SINKS__EVENTS__PATH="$data/processors/events.jsonl"
export PROCESSORS_SINKS__ANALYTICS__PATH="$data/analytics.db"
export PROCESSORS_SINKS__ALERTS__PATH="$data/processors/alerts.sqlite"
if [ -n "${ANALYTICS_DATABASE_URL:-}" ]; then
  export ANALYTICS_DATABASE_URL
  export PROCESSORS_SINKS__ANALYTICS__URL_ENV=ANALYTICS_DATABASE_URL
  analytics_where="PostgreSQL (ANALYTICS_DATABASE_URL)"
else
  analytics_where="the embedded store $data/analytics.db"
fi
setsid "$bin/processors" run --config "$root/deploy/config/processors.local.toml" \
  > "$data/processors.out" 2> >(tee "$data/processors.log" >&2) &
processors_pid=$!
for _ in $(seq 1 100); do
  grep -q "metrics on" "$data/processors.out" 2>/dev/null && break
  sleep 0.1
done
grep -q "metrics on" "$data/processors.out" || { echo "processors did not start; see $data/processors.log" >&2; exit 1; }

venues_port=${VENUES_PORT:-8090}
export VENUES_KAFKA__BROKERS="127.0.0.1:$kafka_port"
export VENUES_HTTP__LISTEN="127.0.0.1:$venues_port"
# Venue pages' history (footfall, arrivals, dwell): the analytics store the
# processors above write.
if [ -n "${ANALYTICS_DATABASE_URL:-}" ]; then
  export VENUES_HISTORY__KIND=postgres VENUES_HISTORY__URL_ENV=ANALYTICS_DATABASE_URL
else
  export VENUES_HISTORY__KIND=sqlite VENUES_HISTORY__PATH="$data/analytics.db"
fi
setsid "$bin/venues" run --config "$root/deploy/config/venues.local.toml" \
  > "$data/venues.out" 2> >(tee "$data/venues.log" >&2) &
venues_pid=$!
for _ in $(seq 1 100); do
  grep -q "listening on" "$data/venues.out" 2>/dev/null && break
  sleep 0.1
done
grep -q "listening on" "$data/venues.out" || { echo "venues did not start; see $data/venues.log" >&2; exit 1; }

body="$root/deploy/examples/purple-event.json"
sig=$(python3 -c 'import hmac,hashlib,sys; print(hmac.new(sys.argv[1].encode(), open(sys.argv[2],"rb").read(), hashlib.sha256).hexdigest())' "$PURPLE_WEBHOOK_SECRET" "$body")
cat <<MSG

Local stack is up: broker $broker (data in $data), ingest http://127.0.0.1:$ingest_port
Send a correctly signed example event:

  curl -sS -X POST http://127.0.0.1:$ingest_port/webhooks/purple \\
    -H 'content-type: application/json' \\
    -H 'x-purple-signature: $sig' \\
    --data-binary @$body

The record is in topic webhooks.raw at $broker: key = venue id, headers
source and event-id, value = Avro single-object envelope
(schemas/avro/envelope/v1.avsc). Read it with any librdkafka-based client
(librdkafka 2.1 or later: Debian's kcat 2.0.2 cannot talk to tansu).

The processors consume it and append each event once, in order per venue,
to $data/processors/events.jsonl, write it to the analytics tables in
$analytics_where, and log VIP arrivals.

Health: curl http://127.0.0.1:$ingest_port/readyz   Metrics: curl http://127.0.0.1:$ingest_port/metrics
Processors: curl http://127.0.0.1:$metrics_port/metrics
Live venue view (occupancy per venue and zone, the last hour):
  curl http://127.0.0.1:$venues_port/api/venues
  curl http://127.0.0.1:$venues_port/api/venues/<venue id>
Ctrl-C stops everything.
MSG

demo_events=${DEMO_EVENTS:-300}
if [ "$demo_events" -gt 0 ]; then
  # The processors answer /readyz 200 once they joined the group and every
  # assigned partition restored its state (bounded: the demo goes on after
  # 60 s and says so).
  for _ in $(seq 600); do
    if curl -sf "http://127.0.0.1:$metrics_port/readyz" >/dev/null 2>&1; then break; fi
    sleep 0.1
  done
  curl -sf "http://127.0.0.1:$metrics_port/readyz" >/dev/null 2>&1 \
    || echo "demo: the processors are not ready after 60 s (see their log above); sending anyway" >&2
  echo "demo: the simulator sends $demo_events events from 3 venues (10% duplicates, 20% out of order, 5% of webhooks lost), its history API on :$api_port..."
  # The provider: webhooks to ingest, and its REST history API (every
  # event, lost webhooks included) kept up until the stack stops.
  setsid "$bin/ingest" send --url "http://127.0.0.1:$ingest_port/webhooks/purple" \
    --scheme purple --count "$demo_events" --venues 3 --concurrency 8 --rate 100 --start now \
    --duplicates 0.1 --out-of-order 0.2 --lose 0.05 \
    --api-listen "127.0.0.1:$api_port" --api-token-env PURPLE_API_TOKEN --api-linger 7d \
    > "$data/provider.out" 2> "$data/provider.log" &
  provider_pid=$!
  for _ in $(seq 1 100); do
    grep -q "^api on" "$data/provider.out" 2>/dev/null && break
    sleep 0.1
  done
  # The poller: the feed from its cursor (kept in webhooks.poll-cursors)
  # every 2 s, and the gaps the processors skip.
  setsid "$bin/ingest" poll --config "$root/deploy/config/ingest.local.toml" \
    > "$data/poller.out" 2> "$data/poller.log" &
  poller_pid=$!
  for _ in $(seq 1 600); do
    grep -q "^sent " "$data/provider.out" 2>/dev/null && break
    alive "$provider_pid" || break
    sleep 0.1
  done
  grep -v "^api on" "$data/provider.out" || echo "demo: the simulator failed (see $data/provider.log)" >&2
  if [ -z "${ANALYTICS_DATABASE_URL:-}" ]; then
    python3 - "$data/analytics.db" "$metrics_port" "$demo_events" <<'PY' || true
import sqlite3, sys, time, urllib.request
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
# Wait (at most 60 s) until the processors wrote every distinct event.
deadline = time.time() + 60
while True:
    try:
        n, = db.execute("select count(*) from events").fetchone()
    except sqlite3.OperationalError:
        n = 0
    if n >= int(sys.argv[3]) or time.time() > deadline:
        break
    time.sleep(0.5)
s, open_, = db.execute("select count(*), count(*) - count(disconnected_at) from device_sessions").fetchone()
print(f"analytics ({sys.argv[1]}): {n} events, {s} device sessions ({open_} still connected)")
print("footfall_hourly (venue, hour, connections, unique devices):")
for row in db.execute("select venue_id, hour, connections, unique_devices from footfall_hourly order by 1, 2 limit 12"):
    print("  " + " | ".join(map(str, row)))
raised = {}
for line in urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[2]}/metrics").read().decode().splitlines():
    if line.startswith("processors_alerts_raised_total{"):
        rule = line.split('rule="')[1].split('"')[0]
        raised[rule] = raised.get(rule, 0) + int(float(line.rsplit(" ", 1)[1]))
print("alerts raised (printed above, log target `alerts`): " + (", ".join(f"{r} {n}" for r, n in sorted(raised.items())) or "none"))
PY
  fi
  python3 - "$data/provider.out" "$metrics_port" "$poller_port" <<'PY' || true
import re, sys, time, urllib.request
def metric(port, prefix):
    """The sum of every series whose line starts with prefix (a name and "{")."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    except OSError:
        return 0.0
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(prefix))
m = re.search(r"^lost on purpose: (\d+) webhooks", open(sys.argv[1]).read(), re.M)
lost = int(m.group(1)) if m else 0
# Until every lost webhook came in through the poller, or (a later run on
# the same data: the store has them already) the poller is at the feed's
# end (a 304) and the processors had a moment; at most 30 s.
start = time.time()
while True:
    recovered = metric(sys.argv[2], "processors_recovered_events_total{")
    caught_up = metric(sys.argv[3], 'ingest_poll_requests_total{outcome="304"') >= 1
    if recovered >= lost or time.time() - start > 30 or (caught_up and time.time() - start > 5):
        break
    time.sleep(0.5)
polled = metric(sys.argv[3], "ingest_poll_events_total{")
print(f"polling: {lost} webhooks lost on purpose; ingest poll read {polled:.0f} events from the provider's "
      f"history API, {recovered:.0f} of them new to the processors (recovered), the rest duplicates, dropped")
PY
  python3 - "$venues_port" <<'PY' || true
import json, sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/api/venues"
# The view follows the processors' changelog: give it a few seconds.
time.sleep(3)
venues = json.load(urllib.request.urlopen(url))["venues"]
print(f"live venue view ({url}): {len(venues)} venues, fullest first")
for v in venues:
    print(f"  {v['id']}: {v['devices']} devices, {v['percent']}% of {v['capacity']} ({v['level']}); zones over: {', '.join(v['zones_over']) or 'none'}; VIPs present: {v['vips_present']}")
    h = json.load(urllib.request.urlopen(f"{url}/{v['id']}"))["history"] or {}
    if "today" in h:
        t = h["today"]
        dwell = "-" if t["median_dwell_seconds"] is None else f"{t['median_dwell_seconds'] / 60:.0f} min"
        print(f"    today ({t['date']}, {h['time_zone']}): {t['arrivals']} arrivals, median dwell {dwell} over {t['sessions_ended']} sessions ended")
    elif "error" in h:
        print(f"    history: {h['error']}")
PY
fi
wait
