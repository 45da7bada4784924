#!/usr/bin/env bash
# The callback path against the same binary's floor, in one run: GET /health, new signed callbacks
# (each a new stored record) and the same callbacks again (each a WeCom retry, answered from the
# dedup path), all with wrk at the same connection count. Prints each rate and the two ratios the
# hot path is held to (BENCHMARKS.md).
#
#   bench/callbacks.sh [REQUESTS] [CONNECTIONS] [SECONDS]
#
# Each round runs SECONDS (default 5) over CONNECTIONS (default 32). REQUESTS (default 400000)
# distinct callbacks are prepared; the new-callback round must not run out of them (it says so if
# it does). Two rounds of retries follow, each replaying 20,000 of the callbacks the first round
# stored: the last ones (WeCom retries within seconds, so this is the retry that happens; the
# gateway remembers what it stored lately), then the first ones. Those go to the store's own dedup
# lookup only on their first replay, and only if more than 131,072 callbacks were stored after
# them (the memory's two generations); the store's answer is remembered, so the rest of that round
# is answered from memory too. It is shown for information, with no target. Needs wrk (Debian:
# apt-get install wrk) and the release build of the binary and the load example:
#   cargo build --release --bin wecom-gateway --example loadtest
# The gateway runs as `wecom-gateway serve` on a temporary data dir with the SQLite store at its
# default settings and the default log level, an agent that never answers (only the acknowledgement
# path is measured), and everyone allowed. Timings are not tests: nothing here runs in `cargo test`.
# THREAD_CPU=1: also print, per round, the CPU the gateway's threads took, by thread name (the
# runtime's workers, the SQLite writer), user and system.
# PROFILE_DIR=DIR: also sample the gateway with `perf record` (Debian: linux-perf) during each
# callback round, into DIR/new.data, DIR/retry.data and DIR/old.data (`perf report -i`).
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-400000}; connections=${2:-32}; seconds=${3:-5}
bin=${BIN_DIR:-target/release}
# The emitter may come from another build than the gateway (to measure an older gateway).
loadtest=${LOADTEST:-$bin/examples/loadtest}
threads=${WRK_THREADS:-1}
command -v wrk >/dev/null || { echo "wrk is not installed (Debian: apt-get install wrk)" >&2; exit 1; }
for f in "$bin/wecom-gateway" "$loadtest"; do
  [ -x "$f" ] || { echo "$f is missing: cargo build --release --bin wecom-gateway --example loadtest" >&2; exit 1; }
done

dir=$(mktemp -d /tmp/wecom-bench.XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"

WECOM_CALLBACK_HOST=127.0.0.1 WECOM_CALLBACK_PORT=$port \
WECOM_CALLBACK_CORP_ID=ww1436e0e65a779aee WECOM_CALLBACK_CORP_SECRET=unused \
WECOM_CALLBACK_AGENT_ID=1000002 WECOM_CALLBACK_TOKEN=hJqcu3uJ9Tn2gXPmxx2w9kkCkCE2EPYo \
WECOM_CALLBACK_ENCODING_AES_KEY=6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt \
WECOM_CALLBACK_ALLOW_ALL_USERS=true WECOM_CALLBACK_DATA_DIR="$dir/data" \
WECOM_CALLBACK_WORKERS=1 WECOM_CALLBACK_SHUTDOWN_GRACE_SECS=0 WECOM_CALLBACK_METRICS_LISTEN=off \
WECOM_CALLBACK_AGENT__DELAY_MS=3600000 WECOM_CALLBACK_API_BASE_URL=http://127.0.0.1:9 \
  "$bin/wecom-gateway" serve >"$dir/log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do curl -fs "$base/health" >/dev/null && break; sleep 0.1; done
curl -fs "$base/health" >/dev/null || { echo "the gateway did not come up:" >&2; cat "$dir/log" >&2; exit 1; }

# Signed with the current time: posted well inside the 300 s replay window.
"$loadtest" "$requests" --emit "$dir/callbacks.txt" >/dev/null

# perf, when asked for, samples the gateway during one round: profiled ROUND COMMAND...
profiled() {
  local round=$1; shift
  if [ -z "${PROFILE_DIR:-}" ]; then "$@"; return; fi
  mkdir -p "$PROFILE_DIR"
  perf record -F 1999 -g -p "$pid" -o "$PROFILE_DIR/$round.data" 2>/dev/null &
  local perf_pid=$!
  "$@"
  kill -INT "$perf_pid"; wait "$perf_pid" || true
}
# CPU ticks (1/100 s) of the gateway's threads so far, summed by thread name: "name user system".
thread_cpu() {
  for t in /proc/"$pid"/task/*; do
    sed -E 's/^[0-9]+ \((.*)\) [A-Za-z] (.*)$/\1\t\2/' "$t/stat"
  done | awk -F'\t' '{ split($2, f, " "); u[$1] += f[11]; s[$1] += f[12] }
                     END { for (k in u) printf "%s\t%d\t%d\n", k, u[k], s[k] }' | sort
}
# CPU seconds (user + system) the gateway has used so far, from /proc.
cpu_used() { awk '{ printf "%.2f", ($14 + $15) / 100 }' "/proc/$pid/stat"; }
# One round: ROUND NAME, then wrk's arguments; prints wrk's RESULT line plus the gateway's CPU.
round() {
  local name=$1; shift
  local before after line
  before=$(cpu_used)
  [ "${THREAD_CPU:-0}" != 1 ] || thread_cpu > "$dir/threads-before"
  line=$(profiled "$name" wrk "$@" | result)
  after=$(cpu_used)
  if [ "${THREAD_CPU:-0}" = 1 ]; then
    thread_cpu > "$dir/threads-after"
    join -t $'\t' "$dir/threads-before" "$dir/threads-after" | awk -F'\t' -v r="$name" \
      '$4 - $2 + $5 - $3 > 0 { printf "  %-6s %-16s user %5.2f s  system %5.2f s\n", r, $1, ($4 - $2) / 100, ($5 - $3) / 100 }' >&2
  fi
  echo "$line cpu_s=$(awk -v a="$after" -v b="$before" 'BEGIN { printf "%.2f", a - b }')"
}
result() { grep '^RESULT' | sed 's/^RESULT //'; }
field() { sed -E "s/.*$1=([0-9.]+).*/\\1/" <<<"$2"; }
rate() { awk -v n="$(field requests "$1")" -v s="$(field seconds "$1")" 'BEGIN { printf "%.0f", n / s }'; }
check() {
  local errors non2xx; errors=$(field errors "$2"); non2xx=$(field non2xx "$2")
  if [ "$(field exhausted "$2")" != 0 ]; then
    echo "$1: the $requests prepared callbacks ran out before $seconds s: give a larger REQUESTS" >&2; exit 1
  fi
  if [ "$errors" != 0 ] || [ "$non2xx" != 0 ]; then
    echo "$1: $errors socket errors, $non2xx answers that were not 2xx; gateway log:" >&2
    tail -20 "$dir/log" >&2; exit 1
  fi
}

health=$(round health -t"$threads" -c"$connections" -d"${seconds}s" -s bench/health.lua "$base/health")
check health "$health"
fresh=$(round new -t"$threads" -c"$connections" -d"${seconds}s" -s bench/callbacks.lua "$base" -- "$dir/callbacks.txt" once)
check "new callbacks" "$fresh"
# Only callbacks the first round certainly stored are replayed: those answered, less the last
# few, which may have been cut off in flight when wrk stopped.
answered=$(( $(field requests "$fresh") - 2 * connections ))
[ "$answered" -gt 20000 ] || { echo "too few callbacks stored ($answered) for the retry rounds" >&2; exit 1; }
retry=$(round retry -t"$threads" -c"$connections" -d"${seconds}s" -s bench/callbacks.lua "$base" -- "$dir/callbacks.txt" $((answered - 19999)) "$answered")
check "retried callbacks" "$retry"
old=$(round old -t"$threads" -c"$connections" -d"${seconds}s" -s bench/callbacks.lua "$base" -- "$dir/callbacks.txt" 1 20000)
check "retries of the first callbacks" "$old"
# The floor again: this machine's speed drifts by ±15 % within a minute, so the ratios use the
# mean of the floor measured before and after the callback rounds.
health2=$(round health -t"$threads" -c"$connections" -d"${seconds}s" -s bench/health.lua "$base/health")
check health "$health2"

h1=$(rate "$health"); h2=$(rate "$health2"); h=$(( (h1 + h2) / 2 )); f=$(rate "$fresh"); r=$(rate "$retry"); o=$(rate "$old")
echo "gateway $bin/wecom-gateway ($(git rev-parse --short HEAD 2>/dev/null || echo '?') checked out), $(nproc) cores, $connections connections, wrk threads $threads, $requests callbacks"
# Gateway CPU per request, in microseconds: what each request costs whatever the load generator takes.
per() { awk -v c="$(field cpu_s "$1")" -v n="$(field requests "$1")" 'BEGIN { printf "%.1f", c * 1e6 / n }'; }
printf '%-28s %8s req/s   p50 %6s ms   p99 %6s ms   gateway CPU %5s us/req\n' \
  "GET /health (before)" "$h1" "$(field p50_ms "$health")" "$(field p99_ms "$health")" "$(per "$health")" \
  "GET /health (after)" "$h2" "$(field p50_ms "$health2")" "$(field p99_ms "$health2")" "$(per "$health2")" \
  "new callbacks (stored)" "$f" "$(field p50_ms "$fresh")" "$(field p99_ms "$fresh")" "$(per "$fresh")" \
  "retried callbacks (dedup)" "$r" "$(field p50_ms "$retry")" "$(field p99_ms "$retry")" "$(per "$retry")" \
  "retries of the first 20,000" "$o" "$(field p50_ms "$old")" "$(field p99_ms "$old")" "$(per "$old")"
awk -v h="$h" -v f="$f" -v r="$r" -v o="$o" 'BEGIN {
  printf "GET /health, mean:      %d req/s\n", h
  printf "ratio new / health:     %.2f (target >= 0.50)\n", f / h
  printf "ratio retried / health: %.2f (target >= 0.80)\n", r / h
  printf "ratio first 20,000 / health: %.2f (no target; see the header)\n", o / h }'
