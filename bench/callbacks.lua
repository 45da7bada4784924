-- wrk script for bench/callbacks.sh. The file holds one prepared request per line,
-- "PATH?QUERY<TAB>BODY" (loadtest --emit).
--   wrk ... -s bench/callbacks.lua URL -- FILE once          each line once, in order (new callbacks)
--   wrk ... -s bench/callbacks.lua URL -- FILE FIRST LAST    lines FIRST..LAST, round and round
-- wrk always runs for its full duration, so "once" must not run out: a thread that does stops,
-- and the summary line says exhausted=1 (the script then asks for more callbacks).
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

local requests = {}
local cycle = false
local next_one = 0

function init(args)
  local file = assert(io.open(args[1], "r"))
  local first, last = 1, math.huge
  if args[2] ~= "once" then
    first, last, cycle = tonumber(args[2]), tonumber(args[3]), true
  end
  local n = 0
  for line in file:lines() do
    n = n + 1
    if n > last then break end
    local path, body = line:match("^([^\t]*)\t(.*)$")
    if path and n >= first then
      requests[#requests + 1] = wrk.format("POST", path, { ["Content-Type"] = "text/xml" }, body)
    end
  end
  file:close()
  assert(#requests > 0, "no requests in " .. args[1])
  wrk.thread:set("exhausted", 0)
end

function request()
  next_one = next_one + 1
  if next_one > #requests then
    if cycle then
      next_one = 1
    else
      wrk.thread:set("exhausted", 1)
      wrk.thread:stop()
      next_one = #requests
    end
  end
  return requests[next_one]
end

function done(summary, latency, requests_stats)
  local exhausted = 0
  for _, t in ipairs(threads) do
    if t:get("exhausted") == 1 then exhausted = 1 end
  end
  io.write(string.format("RESULT requests=%d seconds=%.3f p50_ms=%.3f p99_ms=%.3f errors=%d non2xx=%d exhausted=%d\n",
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status, exhausted))
end
