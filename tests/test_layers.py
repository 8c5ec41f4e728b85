#!/usr/bin/env python3
"""The layers only point down (README.md, "Layout"). Bottom up:

    base/ < kernels/, parallel/ < kvstore/, cuda/ < core/  (these six are libmtok; cuda/ is the
          CUDA backend's kernels, mtok_cuda, in a build with CUDA)
          < eval/ (mtok_eval, the only user of cairo), serve/ (mtok_serve, the HTTP server; siblings)
          < synth/ (mtok_synth) < cli/

Fails when
- a file includes a header of a higher or a sibling module (kernels/ and parallel/ are siblings),
  e.g. kvstore/ including core/mtok.h instead of base/mtok_base.h, or core/ an eval/ header;
- an object file of the build calls (has an undefined symbol defined by) a file of a higher or
  sibling module, read with nm from the objects CMake built (the real build's objects; those of the
  CPU-executed variant, mtok_shim*, only for sources the real build did not compile);
- two or more files call each other in a circle (a strongly connected component of the
  file-to-file call graph), apart from the listed KNOWN_CYCLES, which must still exist (so the
  list only shrinks);
- libmtok's link interface names cairo, or eval/ or synth/, or one of its objects needs cairo_*."""
import glob
import os
import re
import subprocess
import sys

from harness import args

RANK = {"base": 0, "kernels": 1, "parallel": 1, "kvstore": 2, "cuda": 2, "core": 3, "eval": 4, "serve": 4, "synth": 5, "cli": 6}
LIBMTOK = ("base", "kernels", "parallel", "kvstore", "cuda", "core")
SOURCES = ("*.c", "*.h", "*.cu", "*.cuh")
# Circles known when this test was written, each with the change that removes it: a circle inside
# one module that contains all the files of an entry is tolerated. An entry that no longer matches a
# circle fails the test too: delete it.
KNOWN_CYCLES = ()

a = args()
src = os.path.abspath(a.src)
build = os.path.abspath(a.build)
bad = []


def module(path):
    rel = os.path.relpath(path, src)
    top = rel.split(os.sep)[0]
    return top if top in RANK else None


def may_use(a_mod, b_mod):
    return a_mod == b_mod or RANK[b_mod] < RANK[a_mod]


# ---- includes ----
INCLUDE_DIRS = [os.path.join(src, "core"), os.path.join(src, "parallel"), src]  # libmtok's PUBLIC dirs
# The shim build of cuda/ (tests/cuda_shim) adds its own directory and injects ck_shim.h with
# -include: a module must never name a header of tests/ itself (library code does not depend on tests)
INCLUDE_DIRS.append(os.path.join(src, "tests", "cuda_shim"))
for mod in RANK:
    for f in sorted(g for pat in SOURCES for g in glob.glob(os.path.join(src, mod, pat))):
        for n, line in enumerate(open(f, encoding="utf-8", errors="replace"), 1):
            m = re.match(r'\s*#\s*include\s+"([^"]+)"', line)
            if not m:
                continue
            cands = [os.path.join(os.path.dirname(f), m.group(1))] + [os.path.join(d, m.group(1)) for d in INCLUDE_DIRS]
            hit = next((os.path.normpath(c) for c in cands if os.path.exists(c)), None)
            if hit is None:
                continue  # a header of another build (nccl.h, ...)
            if os.path.relpath(hit, src).split(os.sep)[0] == "tests":
                bad.append(f"{os.path.relpath(f, src)}:{n}: includes {os.path.relpath(hit, src)} (library code "
                           "includes a test header; the shim's header comes in by -include)")
                continue
            to = module(hit)
            if to and not may_use(mod, to):
                bad.append(f"{os.path.relpath(f, src)}:{n}: includes {os.path.relpath(hit, src)} ({to}/ is not below {mod}/)")

# ---- calls, from the objects of the build ----
objs, shim_objs = {}, {}
for o in glob.glob(os.path.join(build, "**", "CMakeFiles", "*.dir", "**", "*.o"), recursive=True):
    # <build>/<dir>/CMakeFiles/<target>.dir/<path of the source relative to <dir>, ".." written "__">.o
    subdir, rest = os.path.relpath(o, build).split("CMakeFiles" + os.sep, 1)
    target, rel = rest.split(".dir" + os.sep, 1)
    if not target.startswith("mtok") or target.startswith("mtok_fuzz"):
        continue
    parts = [".." if p == "__" else p for p in rel[:-2].split(os.sep)]  # foo.c.o -> foo.c
    rel = os.path.normpath(os.path.join(subdir, *parts))
    if rel.startswith(".."):
        continue  # a source generated in the build tree
    into = shim_objs if target.startswith(("mtok_shim", "mtok_cuda_shim")) else objs
    if module(os.path.join(src, rel)) and os.path.exists(os.path.join(src, rel)):  # not a moved file's stale object
        # a source that moved to another library leaves its old object behind in an incremental
        # build: the newest object of a source is the one the build uses
        if rel not in into or os.path.getmtime(o) > os.path.getmtime(into[rel]):
            into[rel] = o
for rel, o in shim_objs.items():
    objs.setdefault(rel, o)
if not any(r.startswith("core/") for r in objs):
    print(f"no objects of libmtok under {build}/CMakeFiles: build first")
    sys.exit(1)
defined, undefined = {}, {}
for rel, o in sorted(objs.items()):
    out = subprocess.run(["nm", o], capture_output=True, text=True, check=True).stdout
    undefined[rel] = set()
    for line in out.splitlines():
        p = line.split()
        if len(p) == 2 and p[0] == "U":
            undefined[rel].add(p[1])
        elif len(p) == 3 and p[1] in "TDBRGSVW":
            defined.setdefault(p[2], rel)
graph = {rel: set() for rel in objs}
why = {}
for rel, us in undefined.items():
    for u in us:
        to = defined.get(u)
        if to and to != rel:
            graph[rel].add(to)
            why.setdefault((rel, to), u)
for (f, t), sym in sorted(why.items()):
    fm, tm = module(os.path.join(src, f)), module(os.path.join(src, t))
    if not may_use(fm, tm):
        bad.append(f"{f} calls {t} ({sym}): {tm}/ is not below {fm}/")
    if fm in LIBMTOK and sym.startswith("cairo_"):
        bad.append(f"{f} calls cairo ({sym})")
for rel, us in undefined.items():
    if module(os.path.join(src, rel)) in LIBMTOK:
        for u in sorted(us):
            if u.startswith("cairo_"):
                bad.append(f"{rel} (libmtok) needs {u}")

# strongly connected components (Tarjan, iterative)
index, low, on, stack, sccs, counter = {}, {}, set(), [], [], [0]
for root in sorted(graph):
    if root in index:
        continue
    work = [(root, iter(sorted(graph[root])))]
    index[root] = low[root] = counter[0]; counter[0] += 1; stack.append(root); on.add(root)
    while work:
        v, it = work[-1]
        w = next(it, None)
        if w is not None:
            if w not in index:
                index[w] = low[w] = counter[0]; counter[0] += 1; stack.append(w); on.add(w)
                work.append((w, iter(sorted(graph[w]))))
            elif w in on:
                low[v] = min(low[v], index[w])
            continue
        work.pop()
        if work:
            low[work[-1][0]] = min(low[work[-1][0]], low[v])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop(); on.discard(w); comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(frozenset(comp))
def known(c):
    return any(k <= c for k in KNOWN_CYCLES) and len({f.split("/")[0] for f in c}) == 1


for c in sccs:
    if known(c):
        continue
    edges = [f"{f} -> {t} ({why[(f, t)]})" for f in sorted(c) for t in sorted(graph[f]) if t in c]
    bad.append("files calling each other in a circle: " + "; ".join(edges))
for k in KNOWN_CYCLES:
    if not any(k <= c for c in sccs):
        bad.append("a known circle is gone (delete it from KNOWN_CYCLES): " + ", ".join(sorted(k)))

# ---- libmtok's link interface (written by CMakeLists.txt at generate time) ----
links = os.path.join(build, "layers", "mtok_link_libraries.txt")
if not os.path.exists(links):
    bad.append(f"{links} missing (CMakeLists.txt writes it)")
else:
    text = open(links).read()
    for word in ("cairo", "CAIRO", "mtok_eval", "mtok_synth"):
        if word in text:
            bad.append(f"libmtok links {word}: {text.strip()}")

for b in bad:
    print("FAIL", b)
print(f"test_layers: {len(objs)} objects, {sum(len(g) for g in graph.values())} file-to-file call edges, "
      f"{len(sccs)} circles ({len(KNOWN_CYCLES)} known)" + ("" if bad else ": ok"))
sys.exit(1 if bad else 0)
