#!/usr/bin/env python3
"""Progress lines, per-command help and the README's promises (issue 20, items 4 and 6).

- progress: prefill, generate and qa report `done/total tokens, tok/s, ETA` on stderr, never on stdout;
  with stderr not a terminal one line per --progress-interval (0: every chunk) and nothing for a
  short run at the default 10 s; --no-progress and -q silence it; on a terminal (a pty) the line is
  redrawn in place ("\\r" ... erase to end of line) and ends with a "done in" line.
- help: `mtok COMMAND --help` exits 0 for every command of cli/main.c's table and names every option
  that command's parser (its function in cli/ and the option parsers it calls) compares against.
- bench shows progress on stderr and labels every figure of its text report.
- --kv-dir is created when missing; a file in its way is exit 2 naming the option.
- the README's `mpirun ... niah` example passes niah's option parser as written; it says how to run one
  test; scripts/install-deps.sh without sudo says what to do instead.
Needs only the Python standard library (pty for the terminal case)."""
import json
import os
import pty
import re
import shutil
import subprocess
import sys
import tempfile

from harness import args

a = args()
MTOK, SRC = a.mtok, a.src
bad = []
passed = 0


def check(ok, what):
    global passed
    print(("ok   " if ok else "FAIL ") + what)
    if ok:
        passed += 1
    else:
        bad.append(what)


def run(*cmd, stdin=""):
    return subprocess.run([MTOK, *cmd], capture_output=True, text=True, input=stdin, timeout=180)


LINE = re.compile(r"^prefill: (\d+)/(\d+) tokens \(\d+\.\d%\)(?:  [\d.]+ tok/s)?  (ETA \S+|done in \S+)")


def progress_lines(err):
    return [LINE.match(l) for l in err.splitlines() if LINE.match(l)]


# ---- help: every command, every option its parser accepts ----
def functions(text):
    """name -> body of each top-level C function in text (definitions start at column 0)."""
    out = {}
    for m in re.finditer(r"^[a-z][\w \*]*?\b(\w+)\([^;{]*\)\s*\{\n(.*?)^\}", text, re.S | re.M):
        out[m.group(1)] = m.group(2)
    return out


def help_checks():
    cli = os.path.join(SRC, "cli")
    fns = {}
    for f in sorted(os.listdir(cli)):
        if f.endswith(".c"):
            fns.update(functions(open(os.path.join(cli, f), encoding="utf-8").read()))
    main = open(os.path.join(cli, "main.c"), encoding="utf-8").read()
    table = re.findall(r'\{"(\w+)",\s*(cmd_\w+)\}', main)
    check(len(table) >= 14, f"main.c's command table read ({len(table)} commands)")
    opt_re = re.compile(r'strn?cmp\(\s*[\w>.-]+(?:\[[^\]]*\])?\s*,\s*"(-{1,2}[A-Za-z][\w-]*)"')
    for name, fn in table:
        # the command's function and, transitively, the functions it calls that compare options
        seen, todo, opts = set(), [fn], set()
        while todo:
            f = todo.pop()
            if f in seen or f not in fns:
                continue
            seen.add(f)
            body = fns[f]
            opts.update(opt_re.findall(body))
            opts.update(re.findall(r'\bINT_OPT\("(-[^"]+)"', body))  # cli_common_opt's numeric options
            todo.extend(c for c in re.findall(r"\b(\w+)\(", body) if c in fns)
        p = run(name, "--help")
        text = p.stdout
        missing = sorted(o for o in opts if not re.search(r"(?<![\w-])" + re.escape(o) + r"(?![\w-])", text))
        check(p.returncode == 0 and text.startswith("usage: mtok " + name) and not missing and len(opts) > 0,
              f"mtok {name} --help (rc {p.returncode}) lists the {len(opts)} options its parser accepts"
              + (f"; missing {missing}" if missing else ""))
    p = run("--help")
    check("COMMAND --help" in p.stdout, "mtok --help points to mtok COMMAND --help")


# ---- progress ----
def progress_checks(tmp, model):
    doc = os.path.join(tmp, "doc.txt")
    words = "the river runs past old stone walls and green fields where birds sing at dawn".split()
    with open(doc, "w") as f:
        f.write(" ".join(words[(i * 7) % len(words)] for i in range(320)))
    small = ["--chunk", "64", "--threads", "2"]

    p = run("prefill", "-m", model, "-f", doc, *small, "--progress-interval", "0")
    got = progress_lines(p.stderr)
    m = re.search(r"prefilled (\d+) tokens", p.stderr)
    n = int(m.group(1)) if m else -1
    done = [int(g.group(1)) for g in got]
    check(p.returncode == 0 and len(got) >= 5 and all(int(g.group(2)) == n for g in got)
          and done == sorted(done) and done[-1] == n and got[-1].group(3).startswith("done in")
          and all(g.group(3).startswith("ETA") for g in got[:-1]) and "prefill:" not in p.stdout,
          f"prefill --progress-interval 0: {len(got)} lines of done/{n} tokens, rising, ETA then 'done in', none on stdout")

    p = run("prefill", "-m", model, "-f", doc, *small)
    check(p.returncode == 0 and not progress_lines(p.stderr),
          "prefill at the default interval (10 s): a short run adds no progress line to a log")
    p = run("prefill", "-m", model, "-f", doc, *small, "--progress-interval", "0", "--no-progress")
    q = run("prefill", "-m", model, "-f", doc, *small, "--progress-interval", "0", "-q")
    check(p.returncode == 0 and q.returncode == 0 and not progress_lines(p.stderr) and not progress_lines(q.stderr),
          "--no-progress and -q silence the progress line")

    p = run("generate", "-m", model, "-f", doc, "-n", "3", *small, "--progress-interval", "0")
    got = progress_lines(p.stderr)
    check(p.returncode == 0 and len(got) >= 5 and got[-1].group(3).startswith("done in") and "prefill:" not in p.stdout
          and p.stdout.strip() != "", f"generate: {len(got)} progress lines on stderr, the text alone on stdout")

    qs = os.path.join(tmp, "q.jsonl")
    with open(qs, "w") as f:
        f.write('{"question": "where do birds sing?"}\n')
    p = run("qa", "-m", model, "-f", doc, "--questions", qs, "-n", "2", *small, "--progress-interval", "0")
    got = progress_lines(p.stderr)
    check(p.returncode == 0 and len(got) >= 5 and all(l.startswith("{") for l in p.stdout.splitlines()),
          f"qa -f DOC: {len(got)} progress lines for the document's prefill, stdout only JSON answers")

    # mtok eval: a line per record over the records it runs, ETA, then "done in"; none on stdout's report
    data = os.path.join(tmp, "ruler.jsonl")
    with open(data, "w") as f:
        for i in range(4):
            f.write(json.dumps({"index": i, "input": f"question {i}: where do birds sing?", "outputs": ["dawn"],
                                "length": 12}) + "\n")
    p = run("eval", "-m", model, "--data", data, "--out", os.path.join(tmp, "preds.jsonl"), "-n", "2", *small,
            "--progress-interval", "0")
    EVAL_LINE = re.compile(r"^eval: (\d+)/(\d+) records \(\d+\.\d%\).*?(ETA \S+|done in \S+)")
    got = [m for m in map(EVAL_LINE.match, p.stderr.splitlines()) if m]
    done = [int(g.group(1)) for g in got]
    check(p.returncode == 0 and len(got) >= 4 and done == sorted(done) and set(done) == {1, 2, 3, 4}
          and all(int(g.group(2)) == 4 for g in got) and got[-1].group(3).startswith("done in")
          and not any(l.startswith("eval:") for l in p.stdout.splitlines()),
          f"eval: {len(got)} progress lines, one per record of 4, 'done in' last, none on stdout")

    # a terminal: stderr on a pty, stdout a pipe
    master, slave = pty.openpty()
    proc = subprocess.Popen([MTOK, "generate", "-m", model, "-f", doc, "-n", "2", *small], stdout=subprocess.PIPE,
                            stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    term = b""
    while True:  # until the child closes its side (EIO on Linux)
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        term += chunk
    out = proc.stdout.read()
    proc.wait(timeout=120)
    os.close(master)
    t = term.decode("utf-8", "replace")
    redraws = re.findall(r"\rprefill: (\d+)/(\d+) tokens[^\r\n]*\x1b\[K", t)
    check(proc.returncode == 0 and len(redraws) >= 2 and re.search(r"\rprefill: [^\r\n]*done in [^\r\n]*\x1b\[K\r?\n", t)
          and b"prefill:" not in out and b"\r" not in out,
          f"terminal: the line is redrawn in place ({len(redraws)} redraws) and ends with 'done in' and a newline")


def bench_checks():
    """bench: progress on stderr (the prefills and the fills to each depth), and a text report on stdout
    in which every figure carries its unit or its label."""
    p = run("bench", "--preset", "glm4-tiny", "--prompt", "64", "--gen", "2", "--depths", "0,256", "--check-tokens",
            "8", "--array-mb", "8", "--threads", "2", "--progress-interval", "0")
    fills = re.findall(r"^bench fill: (\d+)/256 tokens", p.stderr, re.M)
    check(p.returncode == 0 and re.search(r"^bench prefill: 64/64 tokens", p.stderr, re.M) and fills
          and "bench " not in p.stdout, f"bench: progress of the prefill and the fill ({len(fills)} lines) on stderr")
    unlabelled = []
    for line in p.stdout.splitlines():
        if line.startswith("model "):  # the model's path may hold digits
            line = line[line.index(":"):]
        for m in re.finditer(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])", line):
            after, before = line[m.end():], line[:m.start()]
            unit_after = re.match(r"\s*(%|[A-Za-z])", after)
            label_before = re.search(r"[A-Za-z]\s*$", before) and not re.match(r"\s*\)", after)
            if not (unit_after or label_before):
                unlabelled.append(f"{m.group(0)!r} in {line.strip()!r}")
    check(p.returncode == 0 and not unlabelled and re.search(r"^decode at depth +256: speed", p.stdout, re.M),
          "bench's text report labels every figure" + (f": unlabelled {unlabelled[:3]}" if unlabelled else ""))


def kv_dir_checks(tmp, model):
    deep = os.path.join(tmp, "kv", "a", "b")
    gen = ["generate", "-m", model, "-p", "the river", "-n", "2", "--kv-budget", "64K", "--kv-block", "16"]
    p = run(*gen, "--kv-dir", deep)
    check(p.returncode == 0 and os.path.isdir(deep), f"a missing --kv-dir is created (rc {p.returncode})")
    blocker = os.path.join(tmp, "file")
    open(blocker, "w").close()
    p = run(*gen, "--kv-dir", os.path.join(blocker, "kv"))
    lines = p.stderr.strip().splitlines()
    check(p.returncode == 2 and lines and "--kv-dir" in lines[-1],
          f"a file in --kv-dir's way: exit {p.returncode}, {lines[-1:] if lines else ''}")


def readme_checks(tmp):
    readme = open(os.path.join(SRC, "README.md"), encoding="utf-8").read()
    lines = [l for l in readme.splitlines() if re.search(r"\bmtok niah\b", l) and "mpirun" in l]
    check(len(lines) >= 1, "the README has an mpirun ... niah example")
    for l in lines:
        argv = l.split("#")[0].split()
        argv = argv[argv.index("niah"):]
        # the placeholders: a model that does not exist and a cold tier under this test's folder;
        # parsing must get past niah's option checks to the launch, which then wants mpirun's ranks
        argv = [("/nonexistent-model" if x == "DIR" else x) for x in argv]
        for i, x in enumerate(argv):
            if i and argv[i - 1] in ("--kv-dir", "--out"):
                argv[i] = os.path.join(tmp, "readme-" + os.path.basename(x))
        p = run(*argv)
        err = p.stderr
        check(p.returncode != 0 and "niah needs" not in err and "unknown option" not in err and "mtok: error" in err,
              f"README's niah example passes the option parser: {err.strip().splitlines()[-1:] if err else ''}")
    check(re.search(r"ctest --test-dir \S+ -R ", readme) is not None, "the README says how to run one test (ctest -R)")


def install_checks(tmp):
    """scripts/install-deps.sh as an ordinary user on a Debian without sudo: stubs for id and dpkg-query
    (nothing installed) on a PATH that has no sudo; it must stop with what to do, not with 'sudo: command
    not found', and the packages it names include Debian's numpy and what eval needs."""
    stub = os.path.join(tmp, "stub")
    os.mkdir(stub)
    for tool in ("grep", "cat"):
        os.symlink(shutil.which(tool), os.path.join(stub, tool))
    for name, body in (("id", 'case "$1" in -u) echo 1000;; -un) echo someone;; *) echo "uid=1000";; esac'),
                       ("dpkg-query", "exit 1")):
        with open(os.path.join(stub, name), "w") as f:
            f.write("#!" + shutil.which("bash") + "\n" + body + "\n")
        os.chmod(os.path.join(stub, name), 0o755)
    p = subprocess.run([shutil.which("bash"), os.path.join(SRC, "scripts", "install-deps.sh")], capture_output=True,
                       text=True, env={"PATH": stub, "HOME": tmp}, timeout=60)
    err = p.stderr
    check(p.returncode != 0 and "command not found" not in err and "no sudo" in err and "su -c" in err
          and all(k in err for k in ("python3-numpy", "python3-jieba", "libicu-dev")),
          f"install-deps.sh without sudo says what to do (rc {p.returncode}): {err.strip().splitlines()[:2]}")


tmp = tempfile.mkdtemp(prefix="mtok-prog-")
try:
    model = os.path.join(tmp, "tiny")
    s = run("synth", "--preset", "glm4-tiny", "--out", model, "-q")
    if s.returncode:
        print("synth failed:", s.stderr)
        sys.exit(1)
    help_checks()
    progress_checks(tmp, model)
    bench_checks()
    kv_dir_checks(tmp, model)
    readme_checks(tmp)
    install_checks(tmp)
finally:
    shutil.rmtree(tmp, ignore_errors=True)
print(f"{passed} passed, {len(bad)} failed")
sys.exit(1 if bad else 0)
