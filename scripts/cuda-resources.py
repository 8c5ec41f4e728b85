#!/usr/bin/env python3
"""The CUDA resource gate: compares what ptxas reports for every kernel (nvcc --resource-usage) with the
budget checked in as cuda/resources.txt.

    cuda-resources.py check  --budget cuda/resources.txt [--build DIR] OBJ...   fails (exit 1) on a regression
    cuda-resources.py update --budget cuda/resources.txt OBJ...                 rewrites the budget
    cuda-resources.py selftest [OBJ...]                                          shows that check can fail
    cuda-resources.py fatbin --expect sm_80,sm_90a,compute_90 OBJ...            what each object's fatbinary holds

OBJ is an object compiled by nvcc through scripts/nvcc-resources.sh, which left ptxas's report of it
in OBJ.res (a path ending in .res is taken as the report itself). Python standard library only;
c++filt (binutils) demangles the kernel names when it is installed.

check fails when, for a (source, kernel, arch) of the build,
  - the kernel uses more registers than its budget (fewer is fine, and reported as room to tighten),
  - it has more spill stores or loads, or a larger stack frame (local memory), than recorded,
  - it is built but not in the budget, or in the budget but no longer built.
Shared memory is recorded and a change is reported, but it does not fail the build: static __shared__
sizes are chosen on purpose, and dynamic shared memory is not known to ptxas at all."""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

FIELDS = ("regs", "smem", "stack", "spill_st", "spill_ld")
HEADER = """\
# cuda/resources.txt: the resource budget of every CUDA kernel, per GPU architecture, as ptxas reports it
# (nvcc --resource-usage). Every build with the CUDA backend compares its compile against this file
# (scripts/cuda-resources.py, target cuda_resources of CMakeLists.txt) and fails when a kernel
#   - uses more registers than its "regs" here (a budget: fewer passes, and the check says so),
#   - spills (spill_st, spill_ld) or uses a stack frame (stack: local memory) beyond what is recorded
#     here, which is 0 for every kernel (ptxas -warn-spills,-warn-lmem-usage,-Werror refuses both too),
#   - is built but missing here, or listed here but no longer built.
# smem (static __shared__ bytes per block) is recorded for review; a change is reported, not refused.
# After an intended change, regenerate the file, review its diff and commit it with the change:
#     cmake --build build --target cuda_resources_update
# Fields: source, kernel (demangled; parameter list and return type dropped), arch, then the figures;
# one line per kernel and architecture, sorted.
"""

ENTRY = re.compile(r"ptxas info\s*: Compiling entry function '([^']+)' for '(\w+)'")
PROPS = re.compile(r"ptxas info\s*: Function properties for (\S+)")
STACK = re.compile(r"^\s+(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
USED = re.compile(r"ptxas info\s*: Used (\d+) registers")
SMEM = re.compile(r"(\d+) bytes smem")


def source_of(obj):
    """cuda/k_rows.cu for .../CMakeFiles/mtok_cuda.dir/cuda/k_rows.cu.o(.res)."""
    p = obj.replace(os.sep, "/")
    if p.endswith(".res"):
        p = p[:-4]
    if p.endswith(".o"):
        p = p[:-2]
    return p.split(".dir/", 1)[1] if ".dir/" in p else os.path.basename(p)


def parse_res(text):
    """{(mangled, arch): figures} of the entry functions (kernels) in one object's ptxas report."""
    out, props = {}, {}
    cur = last_props = None
    for line in text.splitlines():
        m = ENTRY.search(line)
        if m:
            cur = (m.group(1), m.group(2))
            continue
        m = PROPS.search(line)
        if m:
            last_props = m.group(1)
            continue
        m = STACK.match(line)
        if m and last_props is not None:
            props[last_props] = tuple(int(g) for g in m.groups())
            continue
        m = USED.search(line)
        if m and cur is not None:
            name, arch = cur
            stack, sst, sld = props.get(name, (0, 0, 0))
            sm = SMEM.search(line)
            out[(name, arch)] = {"regs": int(m.group(1)), "smem": int(sm.group(1)) if sm else 0,
                                 "stack": stack, "spill_st": sst, "spill_ld": sld}
            cur = None
    return out


def demangle(names):
    names = sorted(set(names))
    if not names or shutil.which("c++filt") is None:
        return {n: n for n in names}
    r = subprocess.run(["c++filt"], input="\n".join(names) + "\n", capture_output=True, text=True)
    lines = r.stdout.splitlines()
    if r.returncode != 0 or len(lines) != len(names):
        return {n: n for n in names}
    return dict(zip(names, lines))


def short_name(full):
    """'void k_attn<128, 4>(float*, int)' -> 'k_attn<128,4>'; '(anonymous namespace)::k(float*)' -> '{anon}::k'."""
    s = full.strip()
    if s.endswith(")"):
        depth = 0
        for i in range(len(s) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(s[i], 0)
            if depth == 0:
                s = s[:i]
                break
    if s.startswith("void "):
        s = s[5:]
    s = s.replace("(anonymous namespace)", "{anon}")
    s = re.sub(r",\s+", ",", s)
    return re.sub(r"\s+", "_", s.strip())


def measured(paths):
    """{(source, kernel, arch): figures} of the objects (or .res files) given."""
    per_obj, missing = [], []
    for p in paths:
        res = p if p.endswith(".res") else p + ".res"
        if not os.path.exists(res):
            missing.append(res)
            continue
        with open(res, encoding="utf-8", errors="replace") as f:
            per_obj.append((source_of(res), parse_res(f.read())))
    dem = demangle(n for _, r in per_obj for (n, _a) in r)
    out = {}
    for src, r in per_obj:
        shorts = {}
        for (n, arch) in r:
            shorts.setdefault((short_name(dem[n]), arch), set()).add(n)
        for (n, arch), fig in r.items():
            k = short_name(dem[n])
            if len(shorts[(k, arch)]) > 1:  # overloads: keep the parameter list to tell them apart
                k = re.sub(r"\s+", "", dem[n])
            out[(src, k, arch)] = fig
    return out, missing


def read_budget(path):
    budget = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            p = line.split()
            if len(p) != 3 + len(FIELDS) or not all(x.isdigit() for x in p[3:]):
                raise ValueError(f"{path}:{n}: expected 'source kernel arch {' '.join(FIELDS)}', got {line!r}")
            budget[(p[0], p[1], p[2])] = dict(zip(FIELDS, (int(x) for x in p[3:])))
    return budget


def write_budget(path, data):
    rows = [(s, k, a) + tuple(str(data[(s, k, a)][f]) for f in FIELDS) for (s, k, a) in sorted(data)]
    head = ("# source", "kernel", "arch") + FIELDS
    w = [max([len(head[i])] + [len(r[i]) for r in rows]) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w[i]) if i < 3 else c.rjust(w[i]) for i, c in enumerate(r)).rstrip()
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(HEADER + fmt(head) + "\n" + "".join(fmt(r) + "\n" for r in rows))
    os.replace(tmp, path)


def compare(budget, got):
    """(failures, notes): lists of lines."""
    fail, note = [], []
    for key in sorted(set(budget) | set(got)):
        where = " ".join(key)
        b, g = budget.get(key), got.get(key)
        if b is None:
            fail.append(f"{where}: new kernel, not in the budget ({g['regs']} registers, {g['smem']} bytes smem)")
            continue
        if g is None:
            fail.append(f"{where}: in the budget but not built (renamed, removed or moved to another file?)")
            continue
        if g["regs"] > b["regs"]:
            fail.append(f"{where}: {g['regs']} registers, budget {b['regs']} (+{g['regs'] - b['regs']})")
        elif g["regs"] < b["regs"]:
            note.append(f"{where}: {g['regs']} registers, below the budget {b['regs']} (update to tighten it)")
        for f, what in (("spill_st", "bytes of spill stores"), ("spill_ld", "bytes of spill loads"),
                        ("stack", "bytes of stack frame (local memory)")):
            if g[f] > b[f]:
                fail.append(f"{where}: {g[f]} {what}, recorded {b[f]}")
        if g["smem"] != b["smem"]:
            note.append(f"{where}: {g['smem']} bytes static shared memory, recorded {b['smem']}")
    return fail, note


def cmd_check(a):
    got, missing = measured(a.objects)
    if missing:
        print("cuda resource gate: no ptxas report for " + ", ".join(missing) +
              " (objects compiled before the gate existed: touch the .cu files or build from clean)")
        return 1
    try:
        budget = read_budget(a.budget)
    except (OSError, ValueError) as e:
        print(f"cuda resource gate: {e}\n(re)write the budget from this build, review it and commit it:\n"
              f"    cmake --build {a.build or 'build'} --target cuda_resources_update")
        return 1
    fail, note = compare(budget, got)
    for n in note:
        print(f"cuda resource gate: note: {n}")
    if fail:
        print(f"cuda resource gate: FAILED against {a.budget}:")
        for f in fail:
            print(f"  {f}")
        print("A register count may grow when a kernel gains work on purpose; a spill or local memory never should.\n"
              "If the change is intended, regenerate the budget, review its diff and commit it with the change:\n"
              f"    cmake --build {a.build or 'build'} --target cuda_resources_update")
        return 1
    kernels = len({(s, k) for s, k, _ in got})
    archs = sorted({ar for _, _, ar in got})
    print(f"cuda resource gate: {kernels} kernels x {' '.join(archs) or 'no arch'} within {a.budget}")
    return 0


def cmd_update(a):
    got, missing = measured(a.objects)
    if missing:
        print("cuda_resources_update: no ptxas report for " + ", ".join(missing) + " (build mtok_cuda first)")
        return 1
    bad = [" ".join(k) for k, v in sorted(got.items()) if v["spill_st"] or v["spill_ld"] or v["stack"]]
    write_budget(a.budget, got)
    print(f"cuda_resources_update: wrote {len(got)} lines to {a.budget}")
    for b in bad:
        print(f"cuda_resources_update: warning: {b} spills or uses local memory: recorded, but fix the kernel")
    return 0


SYNTH = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z4ktplILi256EEvPfi' for 'sm_80'
ptxas info    : Function properties for _Z4ktplILi256EEvPfi
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 2048 bytes smem, 364 bytes cmem[0]
ptxas info    : Compile time = 2.239 ms
ptxas info    : Compiling entry function 'k_plain' for 'sm_80'
ptxas info    : Function properties for k_plain
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 8 registers, used 0 barriers, 360 bytes cmem[0]
ptxas info    : Compiling entry function '_Z4ktplILi256EEvPfi' for 'sm_90a'
ptxas info    : Function properties for _Z4ktplILi256EEvPfi
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 38 registers, used 1 barriers, 2048 bytes smem
"""


def cmd_selftest(a):
    """The gate must pass on an unchanged budget and fail, naming the kernel, on each kind of
    regression: on a synthetic report, and on the build's own reports when objects are given."""
    problems = []
    with tempfile.TemporaryDirectory() as d:
        synth = os.path.join(d, "CMakeFiles", "mtok_cuda.dir", "cuda", "k_synth.cu.o")
        os.makedirs(os.path.dirname(synth))
        with open(synth + ".res", "w") as f:
            f.write(SYNTH)
        got, _ = measured([synth])
        want = {("cuda/k_synth.cu", "ktpl<256>", "sm_80"): 40, ("cuda/k_synth.cu", "ktpl<256>", "sm_90a"): 38,
                ("cuda/k_synth.cu", "k_plain", "sm_80"): 8}
        if not shutil.which("c++filt"):  # names stay mangled
            want = {(s, "_Z4ktplILi256EEvPfi" if k != "k_plain" else k, ar): r for (s, k, ar), r in want.items()}
        if {k: v["regs"] for k, v in got.items()} != want or got[("cuda/k_synth.cu", "k_plain", "sm_80")]["smem"]:
            problems.append(f"synthetic report parsed as {got}, expected registers {want}")
        for label, objs in [("synthetic", [synth])] + ([("build", a.objects)] if a.objects else []):
            got, missing = measured(objs)
            if missing or not got:
                problems.append(f"{label}: no reports ({missing or 'no kernels in them'})")
                continue
            path = os.path.join(d, f"{label}.txt")
            write_budget(path, got)
            if read_budget(path) != got:
                problems.append(f"{label}: the budget file does not read back as written")
            key = max(got, key=lambda k: got[k]["regs"])  # a kernel with registers to lower
            row = " ".join(key)
            copy = lambda m: {k: dict(v) for k, v in m.items()}
            lowered = copy(got)
            lowered[key]["regs"] -= 1
            spilled = copy(got)
            spilled[key]["spill_st"] += 8
            spilled[key]["spill_ld"] += 8
            stacked = copy(got)
            stacked[key]["stack"] += 16
            gone = copy(got)
            gone[("cuda/k_gone.cu", "k_gone", key[2])] = dict(got[key])
            smem = copy(got)
            smem[key]["smem"] += 128
            # (what, budget, build, must fail, text the failure must contain)
            cases = [("unchanged", got, got, False, ""),
                     ("more shared memory (reported, not refused)", got, smem, False, ""),
                     ("fewer registers than the budget", lowered, got, True, row + ": " + str(got[key]["regs"])),
                     ("a new spill", got, spilled, True, row + ": 8 bytes of spill stores"),
                     ("a new stack frame", got, stacked, True, row + ": " + str(got[key]["stack"] + 16)),
                     ("a kernel new to the budget", {k: v for k, v in got.items() if k != key}, got, True,
                      row + ": new kernel"),
                     ("a kernel missing from the build", gone, got, True, "k_gone " + key[2] + ": in the budget")]
            for what, budget, build, must_fail, text in cases:
                fail, _ = compare(budget, build)
                if bool(fail) != must_fail or (must_fail and not any(text in f for f in fail)):
                    problems.append(f"{label}, {what}: failures {fail}, expected " +
                                    (f"one containing {text!r}" if must_fail else "none"))
            # the command line end to end: exit status and the message a developer sees
            write_budget(path, lowered)
            r = subprocess.run([sys.executable, os.path.abspath(__file__), "check", "--budget", path,
                                "--build", "BUILD"] + objs, capture_output=True, text=True)
            print(f"--- {label}: the gate on a budget with one register count lowered (exit {r.returncode}):")
            print(r.stdout.rstrip() + "\n---")
            if r.returncode != 1 or row not in r.stdout or "cmake --build BUILD --target cuda_resources_update" \
                    not in r.stdout:
                problems.append(f"{label}: check on a lowered budget: exit {r.returncode}, output {r.stdout!r}")
            write_budget(path, got)
            r = subprocess.run([sys.executable, os.path.abspath(__file__), "check", "--budget", path] + objs,
                               capture_output=True, text=True)
            if r.returncode != 0:
                problems.append(f"{label}: check on its own budget: exit {r.returncode}, output {r.stdout!r}")
    for p in problems:
        print(f"FAIL {p}")
    print("cuda-resources selftest: " + ("ok" if not problems else f"{len(problems)} problems"))
    return 1 if problems else 0


def fatbin_entries(obj):
    """[(kind, arch)] of the fatbinary in an nvcc object: kind 'sass' or 'ptx', arch 'sm_90a' /
    'compute_90'. The container (header magic 0xBA55ED50, then per entry: kind 1 = PTX, 2 = ELF,
    header size, payload size, arch at +28, flags at +40 with 0x100000 = the arch-specific 'a'
    variant) is read with objcopy, as no cuobjdump ships with every toolkit install."""
    import struct
    with tempfile.TemporaryDirectory() as d:
        raw = os.path.join(d, "fatbin")
        subprocess.run(["objcopy", "-O", "binary", "--only-section=.nv_fatbin", obj, raw], check=True)
        b = open(raw, "rb").read()
    out, off = [], 0
    while off + 16 <= len(b):
        magic, _ver, hsz, fsz = struct.unpack_from("<IHHQ", b, off)
        if magic != 0xBA55ED50:
            raise ValueError(f"{obj}: no fatbinary header at byte {off}")
        p, end = off + hsz, off + hsz + fsz
        while p < end:
            kind, _u, ehsz, size = struct.unpack_from("<HHIQ", b, p)
            arch = struct.unpack_from("<I", b, p + 28)[0]
            flags = struct.unpack_from("<Q", b, p + 40)[0]
            suffix = "a" if flags & 0x100000 else ""
            out.append(("sass", f"sm_{arch}{suffix}") if kind == 2 else ("ptx", f"compute_{arch}{suffix}"))
            p += ehsz + size
        off = end
    return out


def cmd_fatbin(a):
    want = sorted(a.expect.split(","))
    bad = 0
    for obj in a.objects:
        got = sorted(arch for _k, arch in fatbin_entries(obj))
        print(f"{obj}: {' '.join(f'{k}:{ar}' for k, ar in fatbin_entries(obj))}")
        if got != want:
            print(f"FAIL {obj}: fatbinary holds {got}, expected {want}")
            bad += 1
    return 1 if bad or not a.objects else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("check", "update"):
        p = sub.add_parser(name)
        p.add_argument("--budget", required=True)
        p.add_argument("--build", help="build directory, for the update command the message names")
        p.add_argument("objects", nargs="*")
    p = sub.add_parser("selftest")
    p.add_argument("objects", nargs="*")
    p = sub.add_parser("fatbin", help="check that each object's fatbinary holds exactly --expect")
    p.add_argument("--expect", required=True, help="e.g. sm_80,sm_90a,compute_90")
    p.add_argument("objects", nargs="+")
    a = ap.parse_args()
    return {"check": cmd_check, "update": cmd_update, "selftest": cmd_selftest, "fatbin": cmd_fatbin}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
