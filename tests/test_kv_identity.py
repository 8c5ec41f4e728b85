#!/usr/bin/env python3
"""The model identity of saved KV files and saves that complete or change nothing (issue 16, findings
2, 8, 10), glm4-tiny synthetic model:

- two checkpoints identical but for one weight byte a quarter into the data (outside the 3 x 64 KiB
  per shard the identity used to sample) do not accept each other's caches: exit 2, "different model";
- the shard hashes are remembered under $XDG_CACHE_HOME/mtok (else $HOME/.cache/mtok), never beside the
  checkpoint: a second load does not hash again (-v log); a damaged entry, an unusable cache folder or
  a shard rewritten in place with its mtime set back only mean hashing again, never a wrong identity;
- a save that hits the file size limit exits 3 naming the file, leaves no temp and the previous file
  byte for byte, and logs no "saved";
- a FIFO given to --load-kv is refused (exit 2) instead of blocking in open();
- PATH.tmp.PID of a save killed earlier is removed by the next save when PID is gone, kept when alive."""
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile

from harness import args

a = args()
work = tempfile.mkdtemp(prefix="mtok-kvid-")
cache = os.path.join(work, "cache")
ENV = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "passive"), XDG_CACHE_HOME=cache,
           HOME=os.path.join(work, "home"))
bad = 0


def check(ok, what):
    global bad
    bad += not ok
    print(f"{'ok  ' if ok else 'FAIL'} {what}", flush=True)


def run(*argv, env=None, preexec=None, timeout=300):
    return subprocess.run([a.mtok, *argv], capture_output=True, text=True, timeout=timeout, env=env or ENV,
                          preexec_fn=preexec)


def last_line(p):
    lines = p.stderr.strip().splitlines()
    return lines[-1] if lines else ""


def listing(d):
    return sorted((f, os.stat(os.path.join(d, f)).st_size) for f in os.listdir(d))


def entries(d):
    return sorted(f for f in os.listdir(d) if f.startswith("w-")) if os.path.isdir(d) else []


def flip(path, pos):
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0x10]))


try:
    model, edited = os.path.join(work, "tiny"), os.path.join(work, "tiny-edit")
    p = run("synth", "--preset", "glm4-tiny", "--out", model, "-q")
    assert p.returncode == 0, p.stderr
    shutil.copytree(model, edited)
    st = os.path.join(edited, "model.safetensors")
    size = os.path.getsize(st)
    with open(st, "rb") as f:
        data0 = 8 + int.from_bytes(f.read(8), "little")
    # a quarter into the tensor data: ~1 MB from the first, middle and last 64 KiB the old identity sampled
    pos = data0 + (size - data0) // 4
    assert 65536 < pos - data0 < (size - data0) // 2 - 65536
    flip(st, pos)
    before = {d: listing(d) for d in (model, edited)}

    words = "the river stone apple north quiet lamp sea seven green house road".split()
    rng = random.Random(5)
    doc = os.path.join(work, "doc.txt")
    with open(doc, "w") as f:
        f.write(" ".join(rng.choice(words) for _ in range(300)))
    kv = os.path.join(work, "doc.kv")
    common = ["--kv-block", "32"]

    # first save: the shard is hashed and remembered in the cache folder
    p = run("prefill", "-m", model, "-f", doc, "--save-kv", kv, "-v", *common)
    check(p.returncode == 0 and "model identity: hashed" in p.stderr and len(entries(os.path.join(cache, "mtok"))) == 1,
          f"save hashes the weights once and remembers them in $XDG_CACHE_HOME/mtok "
          f"({entries(os.path.join(cache, 'mtok'))})")
    good = open(kv, "rb").read()

    gen = ["generate", "--load-kv", kv, "-p", " seven lamp", "-n", "4", "--ignore-eos", *common]
    p = run(*gen, "-m", edited)
    check(p.returncode == 2 and "different model" in last_line(p) and kv in last_line(p),
          f"one weight byte changed a quarter into the data: refused, exit {p.returncode}: {last_line(p)}")
    p = run(*gen, "-m", model, "-v")
    check(p.returncode == 0 and "remembered in" in p.stderr and "model identity: hashed" not in p.stderr,
          "a second load takes the hash from the cache (no rehash)")
    ref = p.stdout

    # a damaged entry: hashed again, rewritten, and the load still succeeds
    mdir = os.path.join(cache, "mtok")
    for e in entries(mdir):
        with open(os.path.join(mdir, e), "r+b") as f:
            f.seek(-30, os.SEEK_END)
            f.write(b"0" * 8)
    p = run(*gen, "-m", model, "-v")
    q = run(*gen, "-m", model, "-v")
    check(p.returncode == 0 and p.stdout == ref and "stale or damaged" in p.stderr and "model identity: hashed" in p.stderr
          and q.returncode == 0 and "model identity: hashed" not in q.stderr,
          "a damaged cache entry means one rehash, then the rewritten entry is used")

    # a shard rewritten in place with its mtime set back: the ctime in the key still sees it. Undoing the
    # edit makes tiny-edit equal to tiny, so a stale remembered hash would refuse the cache.
    run(*gen, "-m", edited)  # remembers the edited shard's hash
    sb = os.stat(st)
    flip(st, pos)
    os.utime(st, ns=(sb.st_atime_ns, sb.st_mtime_ns))
    p = run(*gen, "-m", edited, "-v")
    check(p.returncode == 0 and p.stdout == ref and "model identity: hashed" in p.stderr,
          f"shard rewritten in place, mtime restored: hashed again and accepted (exit {p.returncode}: {last_line(p)})")
    flip(st, pos)

    # unusable cache folders only cost a rehash; a relative XDG_CACHE_HOME is ignored for $HOME/.cache
    blocker = os.path.join(work, "a-file")
    open(blocker, "w").write("x")
    p = run(*gen, "-m", model, "-v", env=dict(ENV, XDG_CACHE_HOME=blocker))
    check(p.returncode == 0 and p.stdout == ref and "cannot create the cache directory" in p.stderr,
          "a cache folder that cannot be created: hashed, loaded, logged at -v")
    p = run(*gen, "-m", model, env=dict(ENV, XDG_CACHE_HOME="relative/dir"))
    check(p.returncode == 0 and entries(os.path.join(work, "home", ".cache", "mtok"))
          and not os.path.exists(os.path.join(work, "relative")),
          "a relative XDG_CACHE_HOME is ignored: $HOME/.cache/mtok is used")
    check(all(listing(d) == before[d] for d in before), "nothing is written beside the checkpoints")

    # a save that fails on the file size limit: exit 3, the previous file untouched, no temp, no "saved"
    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))

    with open(doc, "a") as f:
        f.write(" green house")  # new content, so a completed save would change the file
    p = run("prefill", "-m", model, "-f", doc, "--save-kv", kv, *common, preexec=small_files)
    temps = [x for x in os.listdir(work) if ".tmp." in x]
    check(p.returncode == 3 and kv in last_line(p) and "File too large" in last_line(p) and "saved" not in p.stderr
          and open(kv, "rb").read() == good and not temps,
          f"save past the file size limit: exit {p.returncode}, previous file kept, no temp: {last_line(p)}")

    # leftovers of killed saves: removed when their process is gone, kept while it lives
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead_tmp, live_tmp = f"{kv}.tmp.{gone.pid}", f"{kv}.tmp.{os.getpid()}"
    for t in (dead_tmp, live_tmp):
        open(t, "wb").write(b"partial")
    p = run("prefill", "-m", model, "-f", doc, "--save-kv", kv, *common)
    check(p.returncode == 0 and not os.path.exists(dead_tmp) and os.path.exists(live_tmp)
          and "left by an interrupted save" in p.stderr,
          "a dead save's temp is removed, a live process's temp is kept")
    os.unlink(live_tmp)

    # a FIFO is not a KV file: refused at once instead of waiting for a writer
    fifo = os.path.join(work, "pipe.kv")
    os.mkfifo(fifo)
    try:
        p = run(*gen[:2], fifo, *gen[3:], "-m", model, timeout=30)
        check(p.returncode == 2 and "not a regular file" in last_line(p) and fifo in last_line(p),
              f"FIFO: exit {p.returncode}: {last_line(p)}")
    except subprocess.TimeoutExpired:
        check(False, "FIFO: --load-kv blocked")
finally:
    shutil.rmtree(work, ignore_errors=True)
print(f"{bad} failed")
sys.exit(1 if bad else 0)
