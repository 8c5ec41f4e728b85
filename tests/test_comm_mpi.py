#!/usr/bin/env python3
"""Multi-rank communicators under mpirun (tests/mpi_comm_check.c, parallel/comm_mpi.c).

- with 2, 3 and 4 ranks (--oversubscribe: this machine may have 2 cores): all-reduce of f32/i32/i64/
  bytes, all-gather with unequal counts (one rank sending nothing) and equal counts, broadcast from
  every root, a ring of sends and receives, splits (by parity with reversed keys, and tp x cp like
  the CLI's), the same again in 7-element pieces (the path for > 1G elements), message-size errors
  that leave the communicator usable, an unanswered receive that times out, and NCCL bootstrap over
  MPI (no GPU here: every rank agrees and reports "no GPU") — each compared exactly;
- a rank that fails and calls mp_abort ends the job within 10 s with its message and exit code;
- a rank that stalls past MTOK_COMM_TIMEOUT=2 makes the waiting rank fail with the timeout message
  and the job end within 10 s;
- kill -9 of one rank, while the other waits in an all-reduce and while all are inside all-reduces,
  ends the job within 10 s with a non-zero status (mpirun names the killed rank), never a hang.
Skipped (77) when the build has no MPI or mpirun is missing."""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--mtok")
ap.add_argument("--src", required=True)
ap.add_argument("--build", required=True)
a = ap.parse_args()

prog = os.path.join(a.build, "tests", "mpi_comm_check")
mpirun = shutil.which("mpirun")
if not os.path.exists(prog) or not mpirun:
    print("built without MPI or no mpirun: skipped")
    sys.exit(77)

bad = 0


def check(ok, what):
    global bad
    bad += not ok
    print(f"{'ok  ' if ok else 'FAIL'} {what}", flush=True)


# mpirun refuses root without these; oversubscribe: more ranks than the CI machine's 2 cores.
# Open MPI's own allocations are not ours to fix: tests/lsan.supp keeps LeakSanitizer (ASan build)
# reporting only mtok's leaks; it needs full stacks (fast_unwind_on_malloc=0) and Open MPI's plugins
# kept loaded at exit (disable_dlclose) to see which library allocated.
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1",
           OMPI_MCA_mca_base_component_disable_dlclose="1")
supp = os.path.join(a.src, "tests", "lsan.supp")
ENV["LSAN_OPTIONS"] = (ENV.get("LSAN_OPTIONS", "") + f":suppressions={supp}:fast_unwind_on_malloc=0").lstrip(":")
ENV.pop("MTOK_COMM_TIMEOUT", None)


def mpirun_cmd(n, *args):
    return [mpirun, "--oversubscribe", "-np", str(n), prog, *args]


def run(n, *args, timeout=120, env=None):
    t0 = time.time()
    try:
        p = subprocess.run(mpirun_cmd(n, *args), capture_output=True, text=True, timeout=timeout,
                           env=env or ENV, start_new_session=True)
        return p.returncode, p.stdout, p.stderr, time.time() - t0
    except subprocess.TimeoutExpired as e:
        return None, e.stdout or "", e.stderr or "", time.time() - t0


def show(out, err):
    print("--- stdout\n" + str(out)[-3000:] + "\n--- stderr\n" + str(err)[-3000:])


# ---- correctness with 2, 3, 4 ranks ----
for n in (2, 3, 4):
    rc, out, err, dt = run(n, "basic")
    oks = sorted(re.findall(r"rank (\d+)/%d: basic ok" % n, out))
    check(rc == 0 and oks == [str(r) for r in range(n)], f"{n} ranks: every collective exact ({dt:.1f} s)")
    if rc != 0 or len(oks) != n:
        show(out, err)

# ---- latency, for the log (this machine's ranks share 2 cores: not a performance check) ----
rc, out, err, dt = run(2, "bench", "500")
check(rc == 0, "2-rank latency run: " + " / ".join(out.strip().splitlines()))

# ---- a rank that fails ends the job with its message ----
rc, out, err, dt = run(3, "fail", "1", timeout=60)
check(rc is not None and dt < 10, f"a failing rank ends the job ({dt:.1f} s)")
check("mtok: error: rank 1: deliberate failure" in err, "its message names the rank")
check(rc == 2, f"exit status is the rank's (2 = bad input): {rc}")
if rc != 2:
    show(out, err)

# ---- a stalled rank: the waiting rank times out ----
rc, out, err, dt = run(2, "stall", "1", "30", timeout=60, env=dict(ENV, MTOK_COMM_TIMEOUT="2"))
msg = "rank 0: all-reduce of 1 float timed out after 2.0 s waiting for the other ranks of a 2-rank mpi communicator"
check(rc == 3 and msg in err, f"collective timeout after MTOK_COMM_TIMEOUT=2 names the operation (exit {rc})")
check(2 <= dt < 10, f"the job ended {dt:.1f} s after start (timeout 2 s)")
if msg not in err:
    show(out, err)


# ---- kill -9 of one rank ----
def kill_one(n, mode):
    """Starts the job, waits until every rank printed its pid (and, for loop, is mid all-reduce),
    kills rank 1 with SIGKILL; returns (exit status or None on a hang, seconds to exit, stderr)."""
    args = mpirun_cmd(n, mode, *(["1"] if mode == "wait" else []))
    env = dict(ENV, MTOK_COMM_TIMEOUT="0")  # no timeout: the launcher alone must end the job
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         start_new_session=True)
    pids, looping, deadline = {}, 0, time.time() + 60
    while (len(pids) < n or (mode == "loop" and looping < n)) and time.time() < deadline:
        line = p.stdout.readline()
        if not line:
            break
        m = re.match(r"pid (\d+) (\d+)", line)
        if m:
            pids[int(m.group(1))] = int(m.group(2))
        looping += line.startswith("looping")
    if 1 not in pids:
        os.killpg(p.pid, signal.SIGKILL)
        return -999, 0.0, p.communicate()[1]
    time.sleep(0.3)  # the others are now waiting in (or looping through) the all-reduce
    t0 = time.time()
    os.kill(pids[1], signal.SIGKILL)
    try:
        _, err = p.communicate(timeout=30)
        return p.returncode, time.time() - t0, err
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        return None, time.time() - t0, p.communicate()[1]


for n, mode, what in ((2, "wait", "while rank 0 waits in an all-reduce"),
                      (3, "loop", "while every rank is inside all-reduces")):
    rc, dt, err = kill_one(n, mode)
    check(rc is not None and rc != 0 and dt < 10, f"kill -9 of rank 1 {what}: job ends in {dt:.1f} s, exit {rc}")
    check("rank 1" in err, "the launcher's message names rank 1")
    if rc is None or rc == 0 or "rank 1" not in err:
        print(err[-2000:])

print("PASS" if not bad else f"{bad} FAILED")
sys.exit(1 if bad else 0)
