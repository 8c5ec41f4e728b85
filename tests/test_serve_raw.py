#!/usr/bin/env python3
"""`mtok serve` at the HTTP level (raw sockets and http.client; no openai package), glm4-tiny model.

- bad requests get clean answers and never stop the server (GET /health after every one): malformed
  JSON and wrong types -> 400 with an OpenAI error object naming the field; unsupported fields (n,
  best_of, logit_bias, suffix, response_format) -> 400 naming them; a body over --max-body -> 413;
  unknown path 404; wrong method 405; a garbage request line; headers promising a body that never
  comes; a body cut short by a close;
- SSE framing: `data: {json}` events, the usage chunk (choices []) right before `data: [DONE]`;
- a client that disconnects during a long prefill (--chunk 32, so the prefill is many chunks) is
  cancelled within a bounded time (finish=cancelled, "client disconnected" in the log), the next
  request is served and reuses the chunks computed before the cancel (0 < cached_tokens < prompt);
- `: keep-alive` comments during a long prefill (--keepalive 1) before the first data event;
- load: 16 concurrent streaming clients against --sessions 2 --max-queue 4, two rounds: each request
  ends with [DONE] or a 429 with Retry-After, none hangs, the log agrees, and the resident memory does not
  grow between the rounds (< 50 MB);
- SIGTERM with a request in flight: exit 0 within a bounded time, the request logged as cancelled."""
import http.client
import json
import os
import random
import shutil
import signal
import socket
import threading
import time

from harness import args
from serve_util import Checks, Server, synth, test_env, workdir

a = args()
check = Checks()
work = workdir("mtok-serve-raw-")
env = test_env(work)
MAX_BODY = 1 << 20  # above the long prompts below (~40 KB), so only the oversized body meets it
WORDS = "the river stone apple north quiet lamp sea seven green house road".split()


def words(seed, n):
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n))


def raw(srv, data, close_write=False, timeout=10):
    """Sends bytes on a fresh socket; returns what came back until the server closed it (or timeout)."""
    s = socket.create_connection((srv.host, srv.port), timeout=timeout)
    got = b""
    try:
        s.sendall(data)
        if close_write:
            s.shutdown(socket.SHUT_WR)
        while True:
            b = s.recv(65536)
            if not b:
                break
            got += b
    except OSError:
        pass
    finally:
        s.close()
    return got


def healthy(srv, what):
    r = srv.try_request("GET", "/health", timeout=10)
    check(r is not None and r.status == 200 and r.json == {"status": "ok"}, f"/health still 200 after {what}")


def error_obj(r):
    e = r.json.get("error") if isinstance(r.json, dict) else None
    return e if isinstance(e, dict) and {"message", "type", "param", "code"} <= set(e) else None


def bad_request(srv, path, body, status, param, what):
    r = srv.post(path, body) if not isinstance(body, bytes) else srv.request("POST", path, body)
    e = error_obj(r)
    ok = r.status == status and e is not None and (param is None or e["param"] == param)
    if status == 400:
        ok = ok and e["type"] == "invalid_request_error"
    check(ok, f"{what}: {status}{' param ' + param if param else ''}: got {r}")
    healthy(srv, what)
    return r


def sse_events(data):
    """'data:' payloads of an event stream, in order, and the comment lines."""
    events, comments = [], []
    for block in data.decode("utf-8").split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("data: "):
                events.append(line[6:])
            elif line.startswith(":"):
                comments.append(line)
    return events, comments


def stream_lines(srv, path, body, timeout=60):
    """POSTs body with stream on; yields (seconds since sent, line) as lines arrive."""
    c = http.client.HTTPConnection(srv.host, srv.port, timeout=timeout)
    c.request("POST", path, body=json.dumps(body).encode(), headers=srv.headers())
    t0 = time.monotonic()
    r = c.getresponse()
    try:
        yield 0.0, f"HTTP {r.status} {r.getheader('Content-Type')}"
        while True:
            line = r.readline()
            if not line:
                break
            yield time.monotonic() - t0, line.decode("utf-8").rstrip("\n")
    finally:
        c.close()


try:
    model = synth(a.mtok, "glm4-tiny", os.path.join(work, "tiny"), env)
    # one thread and 32-token chunks: a 16K-token prefill takes several seconds (many cancel points),
    # far longer than the 1 s keep-alive interval
    with Server(a.mtok, model, "--ctx", "32K", "--chunk", "32", "--threads", "1", "--keepalive", "1",
                "--max-body", str(MAX_BODY), env=env) as srv:
        # ---- bad requests ----
        C = "/v1/completions"
        bad_request(srv, C, b'{"prompt": "x", "max_tokens": ', 400, None, "malformed JSON")
        bad_request(srv, C, b'["not", "an", "object"]', 400, None, "a JSON array as the body")
        bad_request(srv, C, {"prompt": "x", "max_tokens": "x"}, 400, "max_tokens", "max_tokens a string")
        bad_request(srv, C, {"prompt": "x", "temperature": "hot"}, 400, "temperature", "temperature a string")
        bad_request(srv, C, {"prompt": 5}, 400, "prompt", "prompt a number")
        bad_request(srv, C, {"prompt": "x", "stop": [chr(97 + i) for i in range(17)]}, 400, "stop", "17 stop strings")
        bad_request(srv, C, {"prompt": "x", "logprobs": 21}, 400, "logprobs", "logprobs 21")
        bad_request(srv, C, {"prompt": "x", "n": 2}, 400, "n", "n 2")
        bad_request(srv, C, {"prompt": "x", "best_of": 2}, 400, "best_of", "best_of 2")
        bad_request(srv, C, {"prompt": "x", "logit_bias": {"5": 1}}, 400, "logit_bias", "logit_bias")
        bad_request(srv, C, {"prompt": "x", "suffix": "y"}, 400, "suffix", "suffix")
        bad_request(srv, C, {"prompt": [1, 99999999]}, 400, "prompt", "a token id outside the vocabulary")
        bad_request(srv, "/v1/chat/completions", {"messages": "hi"}, 400, "messages", "messages a string")
        bad_request(srv, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                                  "response_format": {"type": "json_object"}},
                    400, "response_format", "response_format json_object")
        # the limit is applied to Content-Length before the body is read: the answer comes without it
        got = raw(srv, (f"POST {C} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {MAX_BODY + 1}\r\nConnection: close\r\n\r\n").encode())
        check(got.startswith(b"HTTP/1.1 413") and b'"error"' in got,
              f"Content-Length {MAX_BODY + 1} over --max-body {MAX_BODY}: 413 before the body: {got[:80]!r}")
        healthy(srv, "a body over --max-body")
        r = srv.request("GET", "/v2/nothing")
        check(r.status == 404 and error_obj(r) is not None, f"unknown path: 404 with an error object: {r}")
        for method, path in (("GET", C), ("DELETE", "/v1/models"), ("GET", "/tokenize")):
            r = srv.request(method, path)
            check(r.status == 405 and error_obj(r) is not None, f"{method} {path}: 405: {r}")
        healthy(srv, "404 and 405")
        got = raw(srv, b"HELLO THERE\r\n\r\n")
        check(got == b"" or (got.startswith(b"HTTP/1.") and got[9:10] == b"4"),
              f"garbage request line: closed or 4xx: {got[:80]!r}")
        healthy(srv, "a garbage request line")
        got = raw(srv, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64)), close_write=True)
        healthy(srv, "TLS bytes on the plain port")
        head = (f"POST {C} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: 100\r\nConnection: close\r\n\r\n").encode()
        got = raw(srv, head, close_write=True)
        check(not got.startswith(b"HTTP/1.1 200"), f"headers promising 100 bytes, then close: no 200: {got[:60]!r}")
        healthy(srv, "headers without the body")
        got = raw(srv, head + b'{"prompt": "the', close_write=True)
        check(not got.startswith(b"HTTP/1.1 200"), f"a body cut short: no 200: {got[:60]!r}")
        healthy(srv, "a truncated body")
        chunked = (f"POST {C} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                   f"Connection: close\r\n\r\n").encode()
        payload = json.dumps({"prompt": "the river", "max_tokens": 2, "temperature": 0}).encode()
        got = raw(srv, chunked + b"%x\r\n" % len(payload) + payload + b"\r\n0\r\n\r\n", timeout=60)
        check(got.startswith(b"HTTP/1.1 200") and b'"text_completion"' in got,
              f"a chunked request body (as httpx sends generators) is read: {got[:120]!r}")
        healthy(srv, "a chunked body")

        # ---- SSE framing (chat, include_usage) ----
        r = srv.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4,
                                              "temperature": 0, "stream": True,
                                              "stream_options": {"include_usage": True}})
        ev, _ = sse_events(r.body)
        objs = [json.loads(x) for x in ev[:-1]] if ev and ev[-1] == "[DONE]" else []
        check(r.status == 200 and r.headers.get("content-type", "").startswith("text/event-stream"),
              f"SSE: 200 text/event-stream ({r.headers.get('content-type')})")
        check(len(objs) >= 3 and objs[-1]["choices"] == [] and objs[-1]["usage"]["completion_tokens"] >= 1
              and all(o["usage"] is None for o in objs[:-1]),
              f"SSE: events end with the usage chunk, then [DONE]: {ev[-2:] if ev else ev}")
        check(r.body.endswith(b"data: [DONE]\n\n"), f"SSE: the stream ends with data: [DONE]: {r.body[-40:]!r}")

        # ---- a client that disconnects during prefill ----
        doc = words(1, 8000)
        n_doc = len(srv.tokenize(doc, add_special_tokens=True))
        mark = srv.mark()
        s = socket.create_connection((srv.host, srv.port), timeout=10)
        body = json.dumps({"prompt": doc, "max_tokens": 4, "temperature": 0}).encode()
        s.sendall((f"POST {C} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
        # the prefill is 1 chunk of 32 tokens at a time; 0.5 s in, some chunks are done, most are not
        time.sleep(0.5)
        s.close()
        t_close = time.monotonic()
        line = srv.wait_log(lambda l: "finish=cancelled" in l and "client disconnected" in l, 10, start=mark)
        dt = time.monotonic() - t_close
        check(line is not None and dt < 5, f"disconnect during prefill: cancelled within {dt:.2f} s: {line}")
        if line is not None:
            f = srv.requests(mark)[-1]
            check(f.get("completion") == "0", f"no token generated for the gone client: {f.get('completion')}")
        r = srv.post(C, {"prompt": doc, "max_tokens": 1, "temperature": 0})
        cached = (r.json or {}).get("usage", {}).get("prompt_tokens_details", {}).get("cached_tokens", -1)
        check(r.status == 200 and 0 < cached < n_doc - 1,
              f"the next request is served and reuses the chunks computed before the cancel: cached {cached} "
              f"of {n_doc}")
        healthy(srv, "a disconnect")

        # ---- keep-alive comments during a long prefill ----
        doc2 = words(2, 8000)  # another text: nothing of it is cached
        first_data, comments, done = None, [], False
        for t, ln in stream_lines(srv, C, {"prompt": doc2, "max_tokens": 2, "temperature": 0, "stream": True}):
            if ln.startswith(": keep-alive") and first_data is None:
                comments.append(t)
            elif ln.startswith("data: ") and first_data is None:
                first_data = t
            done = done or ln == "data: [DONE]"
        check(comments and first_data is not None and done,
              f"--keepalive 1: keep-alive comments at {[round(x, 2) for x in comments]} s before the first event at "
              f"{first_data} s, stream complete {done}")
        check(all(y - x < 3 for x, y in zip([0.0] + comments, comments)),
              "keep-alive comments at most ~1 s apart (3 s slack for a loaded machine)")

        # ---- SIGTERM with a request in flight ----
        doc3 = words(3, 8000)
        mark = srv.mark()
        lines = stream_lines(srv, C, {"prompt": doc3, "max_tokens": 2, "temperature": 0, "stream": True})
        for _, ln in lines:  # wait until the request is in its prefill (first comment), then stop the server
            if ln.startswith(": keep-alive"):
                break
        t0 = time.monotonic()
        rc = srv.stop(signal.SIGTERM, timeout=30)
        dt = time.monotonic() - t0
        lines.close()
        check(rc == 0 and dt < 10 and "mtok serve: stopped" in srv.log_text(),
              f"SIGTERM during a prefill: exit {rc} after {dt:.2f} s")
        f = srv.requests(mark)
        check(f and f[-1].get("finish") == "cancelled", f"the in-flight request is logged as cancelled: "
              f"{f[-1]['line'] if f else None}")

    # ---- load: 16 concurrent streaming clients, 2 sessions, a queue of 4 ----
    with Server(a.mtok, model, "--sessions", "2", "--max-queue", "4", "--ctx", "2048", env=env) as srv:
        def client(i, out, gate):
            # ~450 prompt tokens and 48 generated: each request holds its session for a good fraction of a
            # second, while all 16 arrive within milliseconds (the barrier), so the queue does fill up
            body = json.dumps({"prompt": words(100 + i, 200), "max_tokens": 48, "temperature": 0, "stream": True,
                               "stream_options": {"include_usage": True}}).encode()
            try:
                gate.wait(30)
                c = http.client.HTTPConnection(srv.host, srv.port, timeout=60)
                c.request("POST", "/v1/completions", body=body, headers=srv.headers())
                r = c.getresponse()
                data = r.read()
                c.close()
                if r.status == 429:
                    ra = r.getheader("Retry-After")
                    e = json.loads(data).get("error", {})
                    out[i] = ("429", ra) if ra and ra.strip().isdigit() and e.get("message") else ("bad429", data[:200])
                elif r.status == 200:
                    ev, _ = sse_events(data)
                    out[i] = ("done", None) if ev and ev[-1] == "[DONE]" else ("nodone", data[-200:])
                else:
                    out[i] = (f"status {r.status}", data[:200])
            except Exception as e:  # noqa: BLE001 - a hang (timeout) or a reset is what this test looks for
                out[i] = ("error", repr(e))

        rss = [srv.rss_kb()]
        for rnd in (1, 2):
            mark = srv.mark()
            out, gate = [None] * 16, threading.Barrier(16)
            ths = [threading.Thread(target=client, args=(i, out, gate), daemon=True) for i in range(16)]
            t0 = time.monotonic()
            for t in ths:
                t.start()
            for t in ths:
                t.join(max(1.0, 120 - (time.monotonic() - t0)))
            hung = sum(t.is_alive() for t in ths)
            kinds = [o[0] if o else "hung" for o in out]
            n_done, n_429 = kinds.count("done"), kinds.count("429")
            check(hung == 0 and n_done + n_429 == 16,
                  f"round {rnd}: {n_done} streams ended with [DONE], {n_429} got 429 + Retry-After, {hung} hung; "
                  f"others: {[o for o in out if not o or o[0] not in ('done', '429')]}")
            check(n_done >= 6 and n_429 >= 1, f"round {rnd}: the 2 sessions + 4 queue slots are used, the rest refused "
                  f"({n_done} served, {n_429} refused)")
            logged = srv.wait_requests(16, 20, start=mark)
            st = [x.get("status") for x in logged]
            check(st.count("200") == n_done and st.count("429") == n_429,
                  f"round {rnd}: the log agrees ({st.count('200')} x 200, {st.count('429')} x 429 of {len(st)} lines)")
            rss.append(srv.rss_kb())
        print(f"     VmRSS kB: start {rss[0]}, after round 1 {rss[1]}, after round 2 {rss[2]}")
        check(None not in rss and rss[2] - rss[1] < 50 * 1024, "resident memory bounded between the rounds")
        healthy(srv, "the load rounds")
        t0 = time.monotonic()
        rc = srv.stop(signal.SIGTERM, timeout=30)
        check(rc == 0 and time.monotonic() - t0 < 10, f"SIGTERM: exit {rc} in {time.monotonic() - t0:.2f} s")
except Exception as e:  # noqa: BLE001 - any crash of the test itself is a failure with its trace
    import traceback
    traceback.print_exc()
    check(False, f"test aborted: {type(e).__name__}: {e}")
finally:
    shutil.rmtree(work, ignore_errors=True)
check.exit()
