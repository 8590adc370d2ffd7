-- wrk script for bench/subscribe.py: POST the signup form with a fresh address every time.
-- Usage: wrk -s bench/subscribe.lua http://127.0.0.1:PORT/subscribe -- TAG [SLUG]
-- TAG must be unique per run (subscribe.py passes a random token plus the run number), so no
-- address is ever sent twice; each thread adds its own number and a counter.
-- At the end it prints one line, "BENCH_JSON {...}", that subscribe.py reads.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("thread_no", #threads)
end

function init(args)
   local tag = args[1] or tostring(math.random(1, 1000000000))
   local slug = args[2] or "daily"
   counter = 0
   ok = 0
   other = 0
   prefix = "email=bench-" .. tag .. "-t" .. thread_no .. "-n"
   suffix = "%40example.com&newsletter=" .. slug
   headers = {
      ["Content-Type"] = "application/x-www-form-urlencoded",
      ["Accept"] = "text/html",
      ["User-Agent"] = "wrk (newsletter bench/subscribe.lua)",
   }
end

function request()
   counter = counter + 1
   return wrk.format("POST", nil, headers, prefix .. counter .. suffix)
end

-- Counting here, rather than trusting "Non-2xx or 3xx", tells a 200 from a redirect.
function response(status, _headers, _body)
   if status == 200 then
      ok = ok + 1
   else
      other = other + 1
   end
end

function done(summary, latency, _requests)
   local ok_total, other_total, sent = 0, 0, 0
   for _, thread in ipairs(threads) do
      ok_total = ok_total + thread:get("ok")
      other_total = other_total + thread:get("other")
      sent = sent + thread:get("counter")
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests": %d, "ok": %d, "other": %d, "sent": %d, "duration_us": %d, '
         .. '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, '
         .. '"p50_us": %d, "p99_us": %d}\n',
      summary.requests, ok_total, other_total, sent, summary.duration,
      e.connect, e.read, e.write, e.timeout,
      latency:percentile(50), latency:percentile(99)
   ))
end
