-- wrk script for the cache-hit benchmark (driven by bench/run.py).
-- Usage: wrk -t1 -c32 -d10s -s bench/hit.lua URL -- BODY_FILE AUTH_HEADER
-- Sends the same POST for every request and, when done, prints one line starting with
-- "BENCH_JSON " holding the counts and latency percentiles (microseconds) as JSON.

local request_bytes

function init(args)
   local file = assert(io.open(args[1], "rb"), "cannot open body file " .. tostring(args[1]))
   local body = file:read("*a")
   file:close()
   local headers = {
      ["Content-Type"] = "application/json",
      ["Authorization"] = args[2],
   }
   request_bytes = wrk.format("POST", nil, headers, body)
end

function request()
   return request_bytes
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,'
         .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
         .. '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.min, latency.mean, latency.max,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9)))
end
