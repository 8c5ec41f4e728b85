#!/usr/bin/env python3
"""Numeric options and --tools files through the command line (issue 16 findings 5 and 10).

Every out-of-range or malformed numeric value must end the command with exit 1 and exactly one stderr
line that names the option and its range (docs/OPTIONS.md), before the model is loaded: the loader
logs a line at the default log level, so a lone error line shows nothing ran first. The values
here crashed, hung or were silently changed before the options had ranges. Every problem with a
--tools file must exit 2 with one line naming the file. Needs only the Python standard library."""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile

ap = argparse.ArgumentParser()
ap.add_argument("--mtok", required=True)
ap.add_argument("--src")
ap.add_argument("--build")
args = ap.parse_args()
MTOK = args.mtok
failures = []


def run(*cmd, stdin=""):
    try:
        p = subprocess.run([MTOK, *cmd], capture_output=True, text=True, input=stdin, timeout=60)
    except subprocess.TimeoutExpired:  # e.g. niah --lengths 4G building a 4G-token haystack
        return -1, "", "(timed out after 60 s)"
    return p.returncode, p.stdout, p.stderr


def report(label, ok, rc, lines):
    print(f"{'ok  ' if ok else 'FAIL'} {label}: rc={rc} {lines[-1] if lines else '(no message)'}")
    if not ok:
        failures.append(label)


def expect_error(label, cmd, want, rc_want=1):
    """cmd must exit rc_want with exactly one stderr line, an error containing every string of want."""
    rc, out, err = run(*cmd)
    lines = [l for l in err.strip().splitlines() if l]
    ok = rc == rc_want and len(lines) == 1 and lines[0].startswith("mtok: error: ") and all(w in lines[0] for w in want)
    report(label, ok, rc, lines)


def expect_ok(label, cmd):
    rc, out, err = run(*cmd)
    lines = [l for l in err.strip().splitlines() if l]
    report(label, rc == 0 and not any(l.startswith("mtok: error") for l in lines), rc, lines)
    return out


tmp = tempfile.mkdtemp(prefix="mtok-opt-")
try:
    model = os.path.join(tmp, "tiny")
    rc, _, err = run("synth", "--preset", "glm4-tiny", "--out", model)
    if rc:
        print("synth failed:", err)
        sys.exit(1)
    gen = ["generate", "-m", model, "-p", "hello", "-n", "2"]
    P62, I64MAX, U64MAX = str(2**62), str(2**63 - 1), str(2**64 - 1)
    T30 = str(2**30)

    # ---- finding 5: each of these crashed or misbehaved ----
    def out_of_range(flag, value, rng, extra=(), base=gen):
        expect_error(f"{flag} {value}", [*base, *extra, flag, value], [f"{flag}: {value} is out of range {rng}"])

    out_of_range("--chunk", P62, "[1, 1048576]")                 # heap corruption (scratch size overflow)
    out_of_range("--kv-block", P62, "[1, 65536]")                # SIGFPE (truncated to a zero block size)
    out_of_range("--kv-sinks", I64MAX, f"[0, {T30}]", ["--kv-budget", "1M"])  # SIGSEGV
    out_of_range("--threads", "100000", "[1, ")                  # SIGSEGV in the OpenMP runtime
    out_of_range("--threads", "4294967297", "[1, ")              # silently became 1
    out_of_range("--kv-budget", "9000000000G", f"[0, {2**50}]")  # wrapped negative before the check
    for v in ("nan", "inf", "-inf", "NaN"):                      # nan ignored, inf used
        expect_error(f"--rope-base {v}", [*gen, "--rope-base", v], ["--rope-base: ", "not a finite number"])
    out_of_range("--rope-base", "0", "(0, 1e+12]")
    out_of_range("--rope-base", "1e13", "(0, 1e+12]")

    # ---- every other common numeric option at the edge of its range ----
    out_of_range("--threads", "0", "[1, ")
    out_of_range("--ctx", "0", f"[1, {T30}]")
    out_of_range("--ctx", "2G", f"[1, {T30}]")
    out_of_range("--chunk", "2M", "[1, 1048576]")
    out_of_range("--kv-block", "65537", "[1, 65536]")
    out_of_range("--kv-budget", "-1", f"[0, {2**50}]")
    out_of_range("--kv-budget", "99999999999999999999", f"[0, {2**50}]")
    out_of_range("--kv-window", "-1", f"[0, {T30}]")
    out_of_range("--kv-topk", "0", f"[1, {T30}]")
    out_of_range("--kv-depth", "4097", "[0, 4096]")
    out_of_range("--kv-audit", "1.5", "[0, 1]")
    out_of_range("--log-level", "4", "[0, 3]")
    out_of_range("--tp", "0", "[1, 4096]")
    out_of_range("--cp", "4097", "[1, 4096]")
    out_of_range("--cp-span", "2T", f"[1, {2**40}]")
    out_of_range("-n", "0", f"[1, {T30}]")
    out_of_range("--top-k", "-1", f"[0, {T30}]")
    out_of_range("--temperature", "-1", "[0, 100]")
    out_of_range("--top-p", "0", "(0, 1]")
    out_of_range("--top-p", "1.5", "(0, 1]")
    out_of_range("--top-p", "1e-50", "(0, 1]")                  # 0 as a 32-bit float
    out_of_range("--repetition-penalty", "0", "(0, 100]")
    out_of_range("--seed", "-1", f"[0, {U64MAX}]")              # was taken as 2^64-1
    out_of_range("--seed", str(2**64), f"[0, {U64MAX}]")
    for flag in ("--temperature", "--top-p", "--repetition-penalty", "--kv-audit"):
        expect_error(f"{flag} nan", [*gen, flag, "nan"], [f"{flag}: nan is not a finite number"])
    for flag, v in (("--chunk", "abc"), ("--chunk", "12x"), ("--chunk", ""), ("--threads", "4K"),
                    ("--kv-depth", "1M"), ("--seed", "0x10"), ("--rope-base", "0x10"), ("--ctx", " 5")):
        expect_error(f"{flag} '{v}'", [*gen, flag, v], [f"{flag}: '{v}' is not "])

    # ---- the other commands' numeric options ----
    bench = ["bench", "-m", model]
    out_of_range("--prompt", P62, f"[1, {T30}]", base=bench)
    out_of_range("--prompt", "0", f"[1, {T30}]", base=bench)
    out_of_range("--depths", "-1", f"[0, {T30}]", base=bench)
    out_of_range("--gen", P62, f"[1, {2**20}]", base=bench)
    out_of_range("--check-tokens", "0", "[1, 65536]", base=bench)
    out_of_range("--reps", "0", "[1, 100000]", base=bench)
    out_of_range("--array-mb", P62, f"[1, {2**20}]", base=bench)     # n << 20 overflowed
    out_of_range("--threads", "100000", "[1, ", base=["bench", "limits"])
    out_of_range("--array-mb", P62, f"[1, {2**20}]", base=["bench", "limits"])
    out_of_range("--reps", "4294967297", "[1, 100000]", base=["bench", "limits"])
    expect_error("bench --prompt list too long", [*bench, "--prompt", ",".join(["1"] * 300)], ["--prompt: ", "longer"])
    synth = ["synth", "--preset", "glm4-tiny", "--out", os.path.join(tmp, "never")]
    out_of_range("--shards", "4294967297", "[1, 99999]", base=synth)  # was taken as 1
    out_of_range("--seed", "-5", f"[0, {U64MAX}]", base=synth)
    out_of_range("--threads", "100000", "[1, ", base=["info"])
    niah = ["niah", "-m", model, "--out", os.path.join(tmp, "niah"), "--lengths", "1K", "--depths", "50"]
    out_of_range("--lengths", "8", f"[16, {T30}]", base=niah)
    out_of_range("--lengths", "4G", f"[16, {T30}]", base=niah)
    out_of_range("--depths", "101", "[0, 100]", base=niah)
    # the A:B:N form was not range-checked, and sscanf took nan
    expect_error("--depths 0:200:3", [*niah, "--depths", "0:200:3"], ["--depths: 200 is out of range [0, 100]"])
    expect_error("--depths nan:50:3", [*niah, "--depths", "nan:50:3"], ["--depths: nan is not a finite number"])
    out_of_range("--n-extra", "4294967297", "[0, 15]", base=niah)   # was cast to int
    out_of_range("--max-len", "2T", f"[1024, {T30}]", base=["demo"])
    out_of_range("--size", "9000000000G", f"[1, {2**50}]", base=["bench", "kv"])
    out_of_range("--block-bytes", "2G", f"[1, {T30}]", base=["bench", "kv"])
    logits = ["logits", "-m", model, "--out", os.path.join(tmp, "l.npy"), "--tokens"]
    expect_error("logits --tokens 1,-2", [*logits, "1,-2"], ["--tokens: -2 is out of range [0, 2147483647]"])
    expect_error("logits --tokens 1,2^40", [*logits, f"1,{2**40}"], [f"--tokens: {2**40} is out of range"])
    expect_error("logits --tokens 1,x", [*logits, "1,x"], ["--tokens: 'x' is not an integer"])

    # ---- values inside the ranges still work ----
    expect_ok("in-range values", [*gen, "--chunk", "1K", "--kv-block", "64", "--kv-budget", "1M", "--ctx", "1G",
                                  "--kv-depth", "4096", "--rope-base", "1e12", "--seed", U64MAX, "--log-level", "0"])
    expect_ok("synth --seed 2^64-1", ["synth", "--preset", "glm4-tiny", "--out", os.path.join(tmp, "s2"),
                                      "--seed", U64MAX, "--shards", "2"])
    # a tiny temperature is near-greedy: the sampler used to scale the float logits by 1/T, which
    # overflowed to inf (T = 1e-40 is a float denormal) and drew the last candidate every time
    greedy = expect_ok("temperature 0", [*gen, "-n", "6", "--temperature", "0"])
    tiny = expect_ok("temperature 1e-40", [*gen, "-n", "6", "--temperature", "1e-40", "--top-k", "8"])
    ok = greedy == tiny and greedy
    print(f"{'ok  ' if ok else 'FAIL'} temperature 1e-40 generates what greedy does: {tiny!r} vs {greedy!r}")
    if not ok:
        failures.append("temperature 1e-40")
    expect_ok("repetition penalty 1e-30", [*gen, "--temperature", "1", "--repetition-penalty", "1e-30"])

    # ---- finding 10: every problem with a --tools file names the file (exit 2) ----
    def tools(name, data):
        path = os.path.join(tmp, name)
        if data is not None:
            with open(path, "wb") as f:
                f.write(data)
        return path

    cases = [
        ("missing file", tools("missing.json", None), "No such file"),
        ("directory", tmp, "Is a directory"),
        ("empty file", tools("empty.json", b""), "not valid JSON"),
        ("not JSON", tools("bad.json", b'[{"type": "function"'), "not valid JSON"),
        ("invalid UTF-8", tools("utf8.json", b'[{"name": "\xff"}]'), "not valid JSON"),
        ("NUL byte", tools("nul.json", b'[{"name": "f"}]\0[]'), "NUL byte"),
        ("not a list", tools("obj.json", b'{"name": "f"}'), "expected a JSON array"),
        ("entry not an object", tools("entry.json", b'[{"name": "f"}, 7]'), "entry 1 is a number, not an object"),
        ("missing name", tools("noname.json", b'[{"type": "function", "function": {"description": "d"}}]'),
         'entry 0 has no "name"'),
        ("name not a string", tools("numname.json", b'[{"name": 5}]'), '"name" must be a non-empty one-line string'),
        ("name with a newline", tools("nlname.json", b'[{"name": "a\\nb"}]'), '"name" must be'),
        ("bad parameters", tools("params.json", b'[{"name": "f", "parameters": [1, 2]}]'),
         '"parameters" must be an object'),
        ("bad description", tools("desc.json", b'[{"name": "f", "description": 5}]'), '"description" must be a string'),
        ("not a function tool", tools("python.json", b'[{"type": "python"}]'), '"type" must be "function"'),
        ("function not an object", tools("fn.json", b'[{"type": "function", "function": "f"}]'),
         '"function" must be an object'),
    ]
    if os.geteuid() != 0:  # root reads a mode-000 file anyway
        cases.append(("unreadable", tools("noread.json", b"[]"), "Permission denied"))
        os.chmod(cases[-1][1], 0)
    for label, path, want in cases:
        expect_error(f"--tools {label}", [*gen, "--chat", "--tools", path], [path + ": ", want], rc_want=2)
    for label, path, want in cases[2:4] + cases[7:9]:  # chat reads the same files the same way
        expect_error(f"chat --tools {label}", ["chat", "-m", model, "--tools", path], [path + ": ", want], rc_want=2)
    good = tools("good.json", b'[{"type": "function", "function": {"name": "get_weather", "description": "d", '
                              b'"parameters": {"type": "object", "properties": {}}}}, {"name": "bare"}]')
    expect_ok("--tools good file", [*gen, "--chat", "--tools", good])
finally:
    shutil.rmtree(tmp, ignore_errors=True)

if failures:
    print(f"{len(failures)} failed: {', '.join(failures)}")
    sys.exit(1)
print("all option and --tools cases passed")
