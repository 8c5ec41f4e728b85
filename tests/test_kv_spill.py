#!/usr/bin/env python3
"""Live KV spill through the mtok command line.

- logits of 2048 tokens with --kv-budget ~5% of the KV (g2-chatglm fixture, --kv-block 16) equal the
  unspilled run bit for bit, through io_uring, the thread pool, and the io_uring-unavailable fallback
  (bf16 blocks are written and read back byte-exactly and attention visits them in the same order);
- greedy generation of 96 tokens after a 2K-token prompt with a ~5% budget gives the same tokens as
  all-in-RAM (glm4-tiny synthetic model);
- a corrupt spilled block stops the run with exit 3 naming layer, block, file and offset;
- io_uring unavailable (simulated setup failure) falls back to the thread pool and says so;
- a full disk (a 1.5 MiB tmpfs when we may mount one, and always the injected ENOSPC fault) stops the
  run cleanly with exit 3 and leaves an earlier saved cache intact, no temp files;
- needle-in-a-haystack cells that truncate and reuse a spilled prefix run clean (no false corruption);
- a prefill whose KV is >= 4x the budget keeps its peak RSS under baseline + budget + 10%."""
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

from harness import args, numpy_or_skip

np = numpy_or_skip()

a = args()
fixture = os.path.join(a.src, "tests", "data", "models", "g2-chatglm")
work = tempfile.mkdtemp(prefix="mtok-kvspill-")
bad = 0


def check(ok, what):
    global bad
    bad += not ok
    print(f"{'ok  ' if ok else 'FAIL'} {what}", flush=True)


# libgomp's default active wait makes idle team threads spin; on a 2-core CI machine shared with
# other jobs that starves everything else (and the I/O completions the spill path waits for)
ENV = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "passive"))


def run(*args, timeout=600):
    return subprocess.run([a.mtok, *args], capture_output=True, text=True, timeout=timeout, env=ENV)


def run_rss(*args):
    """Runs mtok prefill; returns (exit code, stderr, peak RSS in bytes). The peak is the VmHWM that
    mtok reads from /proc/self/status at the end (wait4's ru_maxrss would include this Python's RSS,
    which a forked or vforked child inherits across exec)."""
    p = run(*args)
    rss = 0
    if "peak RSS " in p.stderr:
        rss = float(p.stderr.split("peak RSS ")[1].split()[0]) * 2**20
    return p.returncode, p.stderr, rss


def logits(*extra):
    out = os.path.join(work, "l.npy")
    p = run("logits", "-m", fixture, "--tokens", tokens, "--out", out, "-q", "--kv-block", "16", *extra)
    if p.returncode:
        return p, None
    return p, np.load(out)


try:
    rng = random.Random(7)
    tokens = ",".join(str(rng.randrange(500)) for _ in range(2048))
    # KV of g2-chatglm: 2 layers x 2 groups x 32 dims x (K,V) x bf16 = 512 B/token -> 1 MiB at 2048 tokens
    kv_bytes = 2048 * 512
    budget = str(kv_bytes * 5 // 100)
    kvdir = os.path.join(work, "cold")
    os.mkdir(kvdir)
    _, ref = logits()
    # split-K: 16-token chunks on 4 threads cut each group's keys in 2 parts; the parts are fixed by
    # position, so the spilled run must still equal the in-RAM run with the same split bit for bit
    for name, extra in [("io_uring", ()), ("threads", ("--kv-io", "threads")), ("chunk 100", ("--chunk", "100")),
                        ("split-K", ("--chunk", "16", "--threads", "4"))]:
        if name in ("chunk 100", "split-K"):
            _, ref_c = logits(*extra)
        p, got = logits("--kv-budget", budget, "--kv-dir", kvdir, *extra)
        want = ref_c if name in ("chunk 100", "split-K") else ref
        check(got is not None and np.array_equal(got, want),
              f"logits 2048 tokens, budget {budget} B (5% of KV), {name}: bit-identical to no spill "
              f"{'' if got is not None else p.stderr.strip()}")
    check(not os.listdir(kvdir), "no cold-tier files left behind")

    # window policy (StreamingLLM): sinks + the last 256 tokens before each chunk. The first chunk
    # sees everything (equal to exact at the same chunk size: how a chunk's queries are tiled, and so
    # the order of some sums, depends on the chunk size); later positions lose the dropped middle
    # (differ). A chunk longer than the window must not lose its own early blocks to eviction while
    # it is written.
    for chunk in ("256", "1024"):
        _, ref_c = logits("--chunk", chunk)
        p, win = logits("--kv-budget", budget, "--kv-dir", kvdir, "--kv-policy", "window", "--kv-window", "256",
                        "--kv-sinks", "16", "--chunk", chunk)
        first = int(chunk)
        check(win is not None and ref_c is not None and np.array_equal(win[:first], ref_c[:first]) and
              not np.allclose(win[first + 256:], ref_c[first + 256:]),
              f"window policy, chunk {chunk}: first chunk equal to exact, later positions attend sinks + window only")

    # io_uring unavailable: simulated io_uring_queue_init failure -> thread pool, logged
    out = os.path.join(work, "l.npy")
    p = run("logits", "-m", fixture, "--tokens", tokens, "--out", out, "--kv-block", "16", "--kv-budget", budget,
            "--kv-dir", kvdir, "--kv-fault", "nouring")
    check(p.returncode == 0 and "falling back to the pread/pwrite thread pool" in p.stderr
          and np.array_equal(np.load(out), ref), "io_uring unavailable: fallback logged, logits unchanged")
    p = run("info", "--kv-io", "threads")
    check("kv cold-tier I/O: threads" in p.stdout, "mtok info reports the forced thread pool")

    # corrupt spilled block -> exit 3 with layer, block, file, offset
    p = run("logits", "-m", fixture, "--tokens", tokens, "--out", out, "--kv-block", "16", "--kv-budget", budget,
            "--kv-dir", kvdir, "--kv-fault", "corrupt:10")
    msg = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ""
    check(p.returncode == 3 and "checksum mismatch in layer" in msg and " block " in msg and "offset" in msg
          and kvdir in msg, f"corrupt spill block: exit {p.returncode}: {msg}")
    p = run("logits", "-m", fixture, "--tokens", tokens, "--out", out, "--kv-block", "16", "--kv-budget", budget,
            "--kv-dir", kvdir, "--kv-fault", "eio:4:1")
    check(p.returncode == 0 and "retried" in p.stderr and np.array_equal(np.load(out), ref),
          "transient EIO: retried once, logits unchanged")
    p = run("logits", "-m", fixture, "--tokens", tokens, "--out", out, "--kv-block", "16", "--kv-budget", budget,
            "--kv-dir", kvdir, "--kv-fault", "short:4:2")
    check(p.returncode == 3 and "failed twice" in p.stderr, f"persistent short read: exit {p.returncode}")

    # greedy generation with spill == without (glm4-tiny, 2K-token prompt + 96 new tokens)
    model = os.path.join(work, "tiny")
    p = run("synth", "--preset", "glm4-tiny", "--out", model, "-q")
    assert p.returncode == 0, p.stderr
    words = "the river stone apple north quiet lamp sea seven green house road".split()
    rng = random.Random(3)
    doc = os.path.join(work, "doc.txt")
    with open(doc, "w") as f:
        f.write(" ".join(rng.choice(words) for _ in range(950)))
    gen = ["generate", "-m", model, "-f", doc, "-n", "96", "--ignore-eos", "--kv-block", "16"]
    base = run(*gen)
    n_prompt = int(base.stderr.split("prompt ")[1].split()[0]) if "prompt " in base.stderr else 0
    # glm4-tiny KV: 2 layers x 2 groups x 64 x (K,V) x 2 B = 1 KiB/token
    budget_g = (n_prompt + 96) * 1024 * 5 // 100
    spill = run(*gen, "--kv-budget", str(budget_g), "--kv-dir", kvdir)
    check(base.returncode == 0 and spill.returncode == 0 and base.stdout == spill.stdout and n_prompt >= 2000
          and "blocks spilled" in spill.stderr,
          f"greedy generation, {n_prompt}-token prompt + 96, budget {budget_g} B (5%): same tokens as no spill")

    # ENOSPC: a saved cache from before stays intact, the run stops with exit 3
    saved = os.path.join(work, "doc.kv")
    p = run("prefill", "-m", model, "-f", doc, "--kv-block", "16", "--save-kv", saved, "-q")
    assert p.returncode == 0, p.stderr
    before = open(saved, "rb").read()
    p = run("prefill", "-m", model, "-f", doc, "--kv-block", "16", "--kv-budget", str(budget_g), "--kv-dir", kvdir,
            "--save-kv", saved, "--kv-fault", "enospc:1")
    check(p.returncode == 3 and "cannot reserve" in p.stderr and "No space left" in p.stderr
          and open(saved, "rb").read() == before and not [x for x in os.listdir(work) if ".tmp." in x],
          f"injected ENOSPC: exit {p.returncode}, saved cache intact: {p.stderr.strip().splitlines()[-1:]}")
    small = os.path.join(work, "small")
    os.mkdir(small)
    # the cold tier needs ~2 MiB at this budget and reserves 1 MiB, then 2 MiB, ...:
    # the disk fills in the middle of the run
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", small],
                                                   capture_output=True).returncode == 0
    if mounted:
        try:
            p = run("prefill", "-m", model, "-f", doc, "--kv-block", "16", "--kv-budget", str(budget_g),
                    "--kv-dir", small, "--save-kv", saved)
            check(p.returncode == 3 and "No space left" in p.stderr and open(saved, "rb").read() == before,
                  f"real ENOSPC on a 1.5 MiB tmpfs: exit {p.returncode}, saved cache intact: "
                  f"{p.stderr.strip().splitlines()[-1:]}")
        finally:
            if subprocess.run(["umount", small], capture_output=True).returncode:
                subprocess.run(["umount", "-l", small])  # io_uring may release the file asynchronously
    else:
        print("skip real ENOSPC (cannot mount a tmpfs here); the injected fault above covers the path")

    # prefix truncation + reuse under a budget of a few blocks per layer (issue 16, finding 1): niah
    # keeps the common prefix of consecutive cells and rewrites blocks that were spilled; a read-ahead
    # of such a block staged before the rewrite must not survive it (it was checked against the new
    # checksum and a correct cache reported corrupt, exit 3)
    needle = os.path.join(work, "needle")
    p = run("synth", "--preset", "needle", "--out", needle, "-q")
    assert p.returncode == 0, p.stderr
    for io, policy in (("uring", "exact"), ("threads", "exact"), ("uring", "window")):
        out = os.path.join(work, f"niah-{io}-{policy}")
        p = run("niah", "-m", needle, "--lengths", "8192", "--depths", "25,50", "--out", out, "--kv-budget", "1M",
                "--kv-dir", kvdir, "--kv-io", io, "--kv-policy", policy, "-q")
        check(p.returncode == 0 and "corrupt" not in p.stderr,
              f"niah 8192 x depths 25,50, --kv-budget 1M, {io}, {policy}: exit {p.returncode} "
              f"{p.stderr.strip().splitlines()[-1:] if p.returncode else ''}")

    # window policy: a truncate into the range it dropped recomputes the lost positions, so a reused
    # prefix gives the same answer as a fresh run (the kept rows of a dropped block were made up before)
    outs = {}
    for name, depths in (("reuse", "50,25"), ("fresh", "25")):
        out = os.path.join(work, f"niah-window-{name}")
        p = run("niah", "-m", needle, "--lengths", "8192", "--depths", depths, "--out", out, "--kv-budget", "1M",
                "--kv-dir", kvdir, "--kv-policy", "window", "-q")
        rows = [json.loads(x) for x in open(os.path.join(out, "results.jsonl"))] if p.returncode == 0 else []
        outs[name] = [r["output"] for r in rows if r["depth"] == 25.0]
    check(outs["reuse"] and outs["reuse"] == outs["fresh"],
          f"window policy, depth 25 after depth 50 (prefix reuse) == fresh: {outs}")

    # a missing --kv-dir is created (with its parents); one that cannot be (a file in the way) or is
    # read-only is the user's input to fix: exit 2 naming it
    gen_short = ["generate", "-m", model, "-p", "the river", "-n", "2", "--kv-budget", "64K", "--kv-block", "16"]
    deeper = os.path.join(work, "missing", "deeper")
    p = run(*gen_short, "--kv-dir", deeper)
    check(p.returncode == 0 and os.path.isdir(deeper),
          f"missing --kv-dir is created: exit {p.returncode} {p.stderr.strip().splitlines()[-1:]}")
    blocker = os.path.join(work, "blocker")
    open(blocker, "w").close()
    p = run(*gen_short, "--kv-dir", os.path.join(blocker, "kv"))
    check(p.returncode == 2 and "--kv-dir" in p.stderr and "not a directory" in p.stderr.lower(),
          f"--kv-dir under a file: exit {p.returncode} {p.stderr.strip().splitlines()[-1:]}")
    ro = os.path.join(work, "ro")
    os.mkdir(ro)
    if os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", ro],
                                            capture_output=True).returncode == 0:
        try:
            p = run(*gen_short, "--kv-dir", ro)
            check(p.returncode == 2 and "Read-only" in p.stderr,
                  f"read-only --kv-dir: exit {p.returncode} {p.stderr.strip().splitlines()[-1:]}")
        finally:
            subprocess.run(["umount", "-l", ro], capture_output=True)
    elif os.geteuid() != 0:
        os.chmod(ro, 0o555)
        p = run(*gen_short, "--kv-dir", ro)
        check(p.returncode == 2 and "Permission denied" in p.stderr,
              f"unwritable --kv-dir: exit {p.returncode} {p.stderr.strip().splitlines()[-1:]}")
    else:
        print("skip read-only --kv-dir (cannot mount a read-only tmpfs here)")

    # peak RSS: KV >= 4x the budget stays under baseline + budget + 10%
    big = os.path.join(work, "big.txt")
    with open(big, "w") as f:
        f.write(" ".join(rng.choice(words) for _ in range(3000)))
    tiny_doc = os.path.join(work, "tiny.txt")
    with open(tiny_doc, "w") as f:  # one full prefill chunk (256 tokens) touches all the scratch memory
        f.write(" ".join(rng.choice(words) for _ in range(150)))
    budget_r = 1 << 20
    common = ["prefill", "-m", model, "--kv-block", "64", "--kv-dir", kvdir, "--kv-budget", str(budget_r)]
    rc0, _, rss0 = run_rss(*common, "-f", tiny_doc)
    rc1, err1, rss1 = run_rss(*common, "-f", big)
    rc2, err2, rss2 = run_rss("prefill", "-m", model, "--kv-block", "64", "-f", big)
    n_big = int(err1.split("prefilled ")[1].split()[0]) if "prefilled " in err1 else 0
    kv_big = n_big * 1024
    limit = (rss0 + budget_r) * 1.10
    check(rc0 == 0 and rc1 == 0 and rc2 == 0 and kv_big >= 4 * budget_r and 0 < rss1 <= limit < rss2,
          f"peak RSS with KV {kv_big / 2**20:.1f} MiB >= 4x budget {budget_r / 2**20:.0f} MiB: {rss1 / 2**20:.1f} MiB "
          f"<= (baseline {rss0 / 2**20:.1f} + budget) * 1.1 = {limit / 2**20:.1f} MiB "
          f"(all in RAM: {rss2 / 2**20:.1f} MiB)")
finally:
    shutil.rmtree(work, ignore_errors=True)
print(f"{bad} failed")
sys.exit(1 if bad else 0)
