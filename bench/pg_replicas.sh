#!/usr/bin/env bash
# Durable acknowledgements with N replicas of the release binary sharing one PostgreSQL store.
#
#   bench/pg_replicas.sh REPLICAS REQUESTS CONCURRENCY [STORE_URL]
#
# Empties the inbox tables, starts REPLICAS `wecom-gateway serve` processes on ports 18001.. (each
# with its own data_dir, an agent that never answers, one worker), waits for /health, runs
# `loadtest REQUESTS CONCURRENCY --target ... --cpu` against them, then stops them.
# BIN_DIR defaults to target/release; PSQL is how to reach the database for the TRUNCATE.
# PG_STATS=1: also reset and print the server's counters around the run (pg_stat_wal, commits,
# and pg_stat_statements if the extension is installed; the user needs pg_read_all_stats).
set -euo pipefail
replicas=${1:?replicas}; requests=${2:?requests}; concurrency=${3:?concurrency}
store=${4:-${WECOM_CALLBACK_STORE:-postgres://gateway:pw@127.0.0.1:5544/gateway}}
bin=${BIN_DIR:-target/release}
psql_cmd=${PSQL:-psql}

$psql_cmd "$store" -qc "TRUNCATE inbox, routes, outbox RESTART IDENTITY CASCADE" 2>/dev/null || true

pids=(); targets=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
for i in $(seq 1 "$replicas"); do
  port=$((18000 + i)); dir=$(mktemp -d "/tmp/wecom-replica-$i.XXXXXX")
  WECOM_CALLBACK_HOST=127.0.0.1 WECOM_CALLBACK_PORT=$port \
  WECOM_CALLBACK_CORP_ID=ww1436e0e65a779aee WECOM_CALLBACK_CORP_SECRET=unused \
  WECOM_CALLBACK_AGENT_ID=1000002 WECOM_CALLBACK_TOKEN=hJqcu3uJ9Tn2gXPmxx2w9kkCkCE2EPYo \
  WECOM_CALLBACK_ENCODING_AES_KEY=6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt \
  WECOM_CALLBACK_ALLOW_ALL_USERS=true WECOM_CALLBACK_STORE="$store" \
  WECOM_CALLBACK_DATA_DIR="$dir" WECOM_CALLBACK_WORKERS=1 WECOM_CALLBACK_SHUTDOWN_GRACE_SECS=0 \
  WECOM_CALLBACK_AGENT__DELAY_MS=3600000 WECOM_CALLBACK_API_BASE_URL=http://127.0.0.1:9 \
  RUST_LOG=${RUST_LOG:-warn} "$bin/wecom-gateway" serve >"$dir/log" 2>&1 &
  pids+=($!); targets+=("http://127.0.0.1:$port")
done
for t in "${targets[@]}"; do
  for _ in $(seq 1 100); do curl -fs "$t/health" >/dev/null && break; sleep 0.1; done
  curl -fs "$t/health" >/dev/null || { echo "replica $t did not come up" >&2; exit 1; }
done
echo "replicas: $replicas (pids ${pids[*]})"
if [ "${PG_STATS:-0}" = 1 ]; then
  $psql_cmd "$store" -qAtc "SELECT pg_stat_reset_shared('wal'), pg_stat_reset()" >/dev/null
  $psql_cmd "$store" -qAtc "SELECT pg_stat_statements_reset()" >/dev/null 2>&1 || true
fi
# The CPU split names the replicas, the PostgreSQL server (postmaster and its backends) and the
# client; everything else running on the machine is summed as "other processes".
pg_port=$(sed -E 's#.*@[^/]*:([0-9]+)/.*#\1#' <<<"$store")
pg_pid=${PG_PID:-$(ss -Hltnp "sport = :$pg_port" 2>/dev/null | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2 || true)}
ours=$(IFS=,; echo "${pids[*]}${pg_pid:+,$pg_pid}")
"$bin/examples/loadtest" "$requests" "$concurrency" --target "$(IFS=,; echo "${targets[*]}")" --cpu-pids "$ours"
if [ "${PG_STATS:-0}" = 1 ]; then
  sleep 0.5 # statistics are flushed by each backend at the end of its transactions, at most every second
  $psql_cmd "$store" -qAtc "SELECT 'commits '||xact_commit||', rollbacks '||xact_rollback FROM pg_stat_database WHERE datname = current_database()"
  $psql_cmd "$store" -qAtc "SELECT 'wal: records '||wal_records||', MB '||round(wal_bytes/1e6,1)||', writes '||wal_write||', syncs '||wal_sync||', sync time '||round(wal_sync_time::numeric,0)||' ms ('||round((wal_sync_time/greatest(wal_sync,1))::numeric,2)||' ms each), write time '||round(wal_write_time::numeric,0)||' ms' FROM pg_stat_wal"
  $psql_cmd "$store" -qAtF ' | ' -c "SELECT calls, round(total_exec_time::numeric,0) AS total_ms, round(mean_exec_time::numeric,3) AS mean_ms, rows, left(regexp_replace(query, '\s+', ' ', 'g'), 70) FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 8" 2>/dev/null || true
fi
