"""What the `mtok serve` tests share (tests/test_serve_*.py): start a server on a free loopback port,
wait until it answers /health, talk JSON to it, read its stderr log (one `mtok serve: req N ...`
line per request), sample its resident memory and stop it with a signal. Imported as
`from serve_util import ...`; not a test itself (the ctest glob is tests/test_*.py)."""
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

LISTEN_RE = re.compile(r"mtok serve: listening on http://([^:/\s]+|\[[^\]]+\]):(\d+)")
REQ_RE = re.compile(r"mtok serve: req (\d+) ")
FIELD_RE = re.compile(r"(\w+)=(\S+)")


class Checks:
    """Counts failed checks; every check prints one line so a failing run says what differed."""

    def __init__(self):
        self.failed = 0
        self.passed = 0

    def __call__(self, ok, what):
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        print(f"{'ok  ' if ok else 'FAIL'} {what}", flush=True)
        return ok

    def exit(self):
        print(f"{self.passed} passed, {self.failed} failed", flush=True)
        sys.exit(1 if self.failed else 0)


def test_env(work):
    # saved identities go under XDG_CACHE_HOME (core/identity.c): keep them in the test's folder;
    # a passive OpenMP wait keeps idle server threads from spinning on the 2 shared CI cores
    return dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "passive"),
                XDG_CACHE_HOME=os.path.join(work, "cache"))


def synth(mtok, preset, out, env=None):
    p = subprocess.run([mtok, "synth", "--preset", preset, "--out", out, "-q"], capture_output=True, text=True,
                       timeout=300, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"mtok synth --preset {preset} failed ({p.returncode}): {p.stderr}")
    return out


def workdir(prefix):
    return tempfile.mkdtemp(prefix=prefix)


class Reply:
    """One HTTP response: status, headers (lower-case names), raw body and the JSON body (None if not JSON)."""

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body
        try:
            self.json = json.loads(body.decode("utf-8")) if body else None
        except (ValueError, UnicodeDecodeError):
            self.json = None

    def __repr__(self):
        return f"<{self.status} {self.body[:300]!r}>"


class Server:
    """`mtok serve -m MODEL --port 0 ARGS...` with its stderr collected line by line in a thread.

    The port is read from the `listening on` line; start() returns once GET /health says 200.
    Use as a context manager: the process is always gone afterwards (SIGKILL if a test left it running)."""

    def __init__(self, mtok, model, *args, env=None, api_key=None, start_timeout=120):
        self.api_key = api_key
        cmd = [mtok, "serve", "-m", model, "--host", "127.0.0.1", "--port", "0", *args]
        if api_key:
            cmd += ["--api-key", api_key]
        self.cmd = cmd
        self.lines = []
        self.cv = threading.Condition()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=env)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.host, self.port = None, None
        try:
            line = self.wait_log(LISTEN_RE.search, start_timeout)
            if line is None:
                raise RuntimeError(f"no 'listening on' line within {start_timeout} s:\n{self.log_text()}")
            m = LISTEN_RE.search(line)
            self.host, self.port = m.group(1).strip("[]"), int(m.group(2))
            deadline = time.monotonic() + start_timeout
            while True:
                r = self.try_request("GET", "/health", timeout=5)
                if r is not None and r.status == 200:
                    break
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server not ready (exit {self.proc.poll()}, last /health {r}):\n"
                                       f"{self.log_text()}")
                time.sleep(0.05)
        except BaseException:
            self.kill()
            raise

    # ---- the log ----
    def _read(self):
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self.cv:
                self.lines.append(line)
                self.cv.notify_all()
        with self.cv:
            self.lines.append(None)  # end of stream: the process closed stderr
            self.cv.notify_all()

    def log(self):
        with self.cv:
            return [x for x in self.lines if x is not None]

    def log_text(self, last=60):
        return "\n".join(self.log()[-last:])

    def wait_log(self, pred, timeout, start=0):
        """The first line at index >= start for which pred(line) is true, waiting up to timeout s; None if none."""
        deadline = time.monotonic() + timeout
        i = start
        with self.cv:
            while True:
                while i < len(self.lines):
                    line = self.lines[i]
                    if line is None:
                        return None
                    if pred(line):
                        return line
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cv.wait(left)

    def mark(self):
        """A log position: wait_log(..., start=mark) then sees only what was logged afterwards."""
        with self.cv:
            return len(self.lines)

    def requests(self, start=0):
        """The request log lines from position start on, as dicts of their key=value fields plus
        'n' (the request number) and 'line' (the whole line)."""
        out = []
        for line in self.log()[start:]:
            m = REQ_RE.search(line)
            if m:
                d = dict(FIELD_RE.findall(line[m.end():]))
                d["n"], d["line"] = int(m.group(1)), line
                out.append(d)
        return out

    def wait_requests(self, count, timeout, start=0):
        """Waits until at least count request lines were logged after start; returns them."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.mark()  # taken first: a line logged meanwhile is then still waited for below
            got = self.requests(start)
            left = deadline - time.monotonic()
            if len(got) >= count or left <= 0 or self.proc.poll() is not None:
                return got
            self.wait_log(lambda l: REQ_RE.search(l) is not None, left, start=seen)

    # ---- HTTP ----
    @property
    def base(self):
        return f"http://{self.host}:{self.port}"

    def headers(self, extra=None):
        h = {"Content-Type": "application/json"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        h.update(extra or {})
        return h

    def request(self, method, path, body=None, headers=None, timeout=120):
        """One request on a fresh connection; body: a dict/list (sent as JSON), bytes or None."""
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        c = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            c.request(method, path, body=body, headers=self.headers(headers))
            r = c.getresponse()
            data = r.read()
            return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
        finally:
            c.close()

    def try_request(self, *a, **k):
        try:
            return self.request(*a, **k)
        except (OSError, http.client.HTTPException):
            return None

    def post(self, path, body, **k):
        return self.request("POST", path, body, **k)

    def tokenize(self, prompt=None, add_special_tokens=False, **fields):
        body = dict(fields)
        if prompt is not None:
            body.update(prompt=prompt, add_special_tokens=add_special_tokens)
        r = self.post("/tokenize", body)
        if r.status != 200 or not isinstance(r.json, dict) or "tokens" not in r.json:
            raise RuntimeError(f"/tokenize {json.dumps(body)[:200]}: {r}")
        return r.json["tokens"]

    # ---- the process ----
    def rss_kb(self):
        """VmRSS of the server process in kB (None once it is gone)."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Sends sig and waits up to timeout s: the exit code, or None if it had to be killed."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        self.reader.join(5)
        return rc

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.reader.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()
        return False


def cli_generate(mtok, model, prompt, n, *extra, env=None):
    """`mtok generate -m MODEL -p PROMPT -n N --temperature 0`: (text, prompt tokens computed).
    stdout is the streamed text and one newline; stderr's `prompt N tokens` counts the prompt."""
    p = subprocess.run([mtok, "generate", "-m", model, "-p", prompt, "-n", str(n), "--temperature", "0", *extra],
                       capture_output=True, timeout=300, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"mtok generate failed ({p.returncode}): {p.stderr.decode(errors='replace')}")
    out = p.stdout.decode("utf-8")
    assert out.endswith("\n"), out
    m = re.search(r"prompt (\d+) tokens", p.stderr.decode(errors="replace"))
    return out[:-1], int(m.group(1)) if m else None


def cli_tokenize(mtok, model, text, special=False, env=None):
    """`mtok tokenize` (no [gMASK]<sop>): the ids, independently of the server."""
    p = subprocess.run([mtok, "tokenize", "-m", model, "--text", text] + (["--special"] if special else []),
                       capture_output=True, text=True, timeout=60, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"mtok tokenize failed: {p.stderr}")
    return json.loads(p.stdout)
