-- wrk script for benchmarks/serve.py: POST /recommend for random known users, then one JSON
-- line with the latency percentiles (microseconds) that wrk's own summary leaves out (p95).
local users = tonumber(os.getenv("BENCH_USERS") or "3000")
local k = tonumber(os.getenv("BENCH_K") or "20")

function setup(thread)
  thread:set("seed", math.random(1, 1000000))
end

function init(args)
  math.randomseed(seed)
end

request = function()
  local body = string.format('{"user_id": "user-%05d", "k": %d}', math.random(0, users - 1), k)
  return wrk.format("POST", "/recommend", {["Content-Type"] = "application/json"}, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "socket_errors": %d, "status_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), latency.max, e.connect + e.read + e.write + e.timeout, e.status))
end
