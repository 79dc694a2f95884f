-- One wrk scenario, set by environment variables:
--   BENCH_METHOD (GET), BENCH_PATH (may hold {id}: a random BENCH_MIN_ID (1)..BENCH_MAX_ID,
--     never BENCH_SKIP_ID: the next one instead),
--   BENCH_BODY, BENCH_TOKEN (a bearer token),
--   BENCH_MODE, with BENCH_ITEMS (a file, one item a line, split between the threads):
--     "sequence": line "token id": each item once, in turn ({id} in the path is its id);
--     "edit": line "token id etag": a pool of posts; each request takes one out, sends
--       If-Match with its ETag and a body that changes it, and the answer puts it back
--       with the new ETag (a connection never has a post another one is editing);
--     "rotate": line "token": each request as the next token, BENCH_BODY's {n} a
--       number new for each request;
--   BENCH_RETRY_AFTER (see below).
-- Prints one JSON line: requests, errors, latency percentiles (microseconds).
local method = os.getenv("BENCH_METHOD") or "GET"
local path = os.getenv("BENCH_PATH") or "/"
local body = os.getenv("BENCH_BODY")
local token = os.getenv("BENCH_TOKEN")
local min_id = tonumber(os.getenv("BENCH_MIN_ID") or "1")
local max_id = tonumber(os.getenv("BENCH_MAX_ID") or "1")
local skip_id = tonumber(os.getenv("BENCH_SKIP_ID") or "0")
local mode = os.getenv("BENCH_MODE") or ""
local items_file = os.getenv("BENCH_ITEMS") or ""
local threads = tonumber(os.getenv("BENCH_THREADS") or "2")
local counter = 0

setup = function(thread)
  counter = counter + 1
  thread:set("seed", counter)
end

local items, pool, owner = {}, {}, {}
local next_item, sent = 1, 0

local function headers_for(bearer, extra)
  local h = {["Content-Type"] = "application/json"}
  if bearer and bearer ~= "" then
    h["Authorization"] = "Bearer " .. bearer
  end
  for k, v in pairs(extra or {}) do
    h[k] = v
  end
  return h
end

init = function(args)
  math.randomseed(os.time() + (seed or 0))
  wrk.headers["Content-Type"] = "application/json"
  if token and token ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. token
  end
  if items_file ~= "" then
    local i = 0
    for line in io.lines(items_file) do
      if i % threads == (seed or 1) - 1 then
        local fields = {}
        for field in line:gmatch("%S+") do
          fields[#fields + 1] = field
        end
        items[#items + 1] = fields
      end
      i = i + 1
    end
    if mode == "edit" then
      for _, item in ipairs(items) do
        pool[#pool + 1] = item
        owner[item[2]] = item[1]
      end
    end
  end
end

request = function()
  sent = sent + 1
  if mode == "sequence" then
    local item = items[next_item]
    next_item = next_item % #items + 1
    return wrk.format(method, path:gsub("{id}", item[2]), headers_for(item[1]), body)
  elseif mode == "edit" then
    local item = table.remove(pool)
    local edit = string.format('{"body": "Edited under load, %d-%d."}', seed or 0, sent)
    return wrk.format(method, path:gsub("{id}", item[2]), headers_for(item[1], {["If-Match"] = item[3]}), edit)
  elseif mode == "rotate" then
    local item = items[next_item]
    next_item = next_item % #items + 1
    local b = body:gsub("{n}", string.format("%d-%d", seed or 0, sent))
    return wrk.format(method, path, headers_for(item[1]), b)
  end
  local id = math.random(min_id, max_id)
  if id == skip_id then
    id = id < max_id and id + 1 or min_id
  end
  local p = path:gsub("{id}", tostring(id))
  return wrk.format(method, p, nil, body)
end

if mode == "edit" then
  response = function(status, headers, response_body)
    local id = response_body:match('"id": ?(%d+)')
    local etag = headers["ETag"] or headers["Etag"] or headers["etag"]
    if id and etag and owner[id] then
      pool[#pool + 1] = {owner[id], id, etag}
    end
  end
end

-- BENCH_RETRY_AFTER=1: after a 503 with Retry-After, the thread's next request waits
-- that long, as a client that follows the header does (a login flood's clients)
if os.getenv("BENCH_RETRY_AFTER") == "1" then
  local pause_ms = 0
  response = function(status, headers)
    if status == 503 then
      pause_ms = 1000 * (tonumber(headers["Retry-After"] or headers["retry-after"] or "1") or 1)
    end
  end
  delay = function()
    local ms = pause_ms
    pause_ms = 0
    return ms
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "socket_errors": %d, "status_errors": %d, ' ..
    '"error_kinds": {"connect": %d, "read": %d, "write": %d, "timeout": %d, "4xx/5xx": %d}, ' ..
    '"p50": %d, "p95": %d, "p99": %d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
