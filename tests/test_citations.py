#!/usr/bin/env python3
"""Every file a comment or a doc cites exists in this repository.

Scans the comments of C sources and headers, the comments and docstrings of Python files, the
comments of CMake and shell files, and every Markdown file, for
  - Markdown files (`docs/DESIGN.md`, `README.md`, `../README.md` from a folder), with their
    sections when a § number follows the name (a heading of the file must start with that number);
  - source paths under one of the repository's top-level folders (`core/forward.c`,
    `tests/ref/glm_ref.py`);
  - bare C file names (`cpu_dispatch.c`), which must name some file of the repository (or, listed in
    EXTERNAL, a file of another project that a comment names on purpose);
  - design notes kept outside the repository, cited by name without a path (OUTSIDE below).
A path resolves from the repository root or from the citing file's folder, and must stay inside the
repository: a citation of a folder beside the checkout or of an absolute path fails. Paths written
after a colon (`owner/repo:path`, the form for another project's files) and inside URLs are not
checked, nor are system headers in angle brackets. Fails with one line per citation that does not
resolve."""
import ast
import io
import os
import re
import subprocess
import sys
import tokenize

from harness import args

a = args()
SRC = os.path.abspath(a.src)
TEXT_EXT = (".c", ".h", ".py", ".md", ".sh", ".cmake", ".txt", ".cu", ".cuh")
SKIP_DIRS = ("tests/data/", "tests/fuzz/corpus")
# Files of other projects that comments name on purpose (headers of dependencies, SQLite's pager.c),
# and the placeholder names tests use as examples.
EXTERNAL = {"nccl.h", "cuda_runtime_api.h", "cuda.h", "mpi.h", "hwloc.h", "liburing.h", "jansson.h", "cairo.h",
            "pcre2.h", "xxhash.h", "omp.h", "immintrin.h", "pager.c", "foo.c", "foo.h"}
# Notes that live outside this repository; their facts belong in docs/ (docs/GLM.md, docs/EVAL.md,
# docs/DESIGN.md).
OUTSIDE = re.compile(r"\b(glm-spec|eval-harnesses|server-clients|shared/docs)\b")


def repo_files():
    try:
        out = subprocess.run(["git", "-C", SRC, "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                             capture_output=True, check=True).stdout.decode()
        files = [f for f in out.split("\0") if f and os.path.isfile(os.path.join(SRC, f))]
        if files:
            return files
    except (OSError, subprocess.CalledProcessError):
        pass
    files = []  # not a git checkout: every file but build folders
    for root, dirs, names in os.walk(SRC):
        rel = os.path.relpath(root, SRC)
        dirs[:] = [d for d in dirs if not d.startswith((".", "build"))]
        files += [os.path.normpath(os.path.join(rel, n)) for n in names]
    return files


FILES = set(repo_files())
DIRS = {os.path.dirname(f) for f in FILES}
for d in list(DIRS):
    while d:
        d = os.path.dirname(d)
        DIRS.add(d)
TOP = {f.split("/")[0] for f in FILES if "/" in f}
BASENAMES = {os.path.basename(f) for f in FILES}


def c_comments(text):
    """(line, comment text) of every /* */ and // comment, skipping string and char literals."""
    out, i, n, line = [], 0, len(text), 1
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append((line, text[i:j]))
            line += text.count("\n", i, j)
            i = j
            continue
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append((line, text[i:j]))
            i = j
            continue
        if c in "\"'":
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            i = j + 1
            continue
        i += 1
    return out


def py_comments(text):
    out = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT:
                out.append((tok.start[0], tok.string))
        tree = ast.parse(text)
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return [(1, text)]
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                out.append((node.body[0].lineno, doc))
    return out


def hash_comments(text):
    out = []
    for k, ln in enumerate(text.split("\n"), 1):
        m = re.search(r"(?:^|\s)#(?!include|!)(.*)$", ln)
        if m:
            out.append((k, m.group(1)))
    return out


def pieces(path, text):
    if path.endswith((".c", ".h", ".cu", ".cuh")):
        return c_comments(text)
    if path.endswith(".py"):
        return py_comments(text)
    if path.endswith(".md"):
        return [(1, text)]
    return hash_comments(text)


URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+")
ANGLE = re.compile(r"<[\w/.+-]+\.h>")
PATH = re.compile(r"(?<![\w./:@-])((?:\.\.?/|/)?(?:[\w.+-]+/)*[\w.+-]+\.(?:md|c|h|py|sh|cmake|cu|cuh|json|txt))(?![\w/-])")
SECTIONS = re.compile(r"\s*(?:,|–|-|and|&)?\s*§\s?(\d+(?:\.\d+)*)")


def resolve(cite, frm):
    """The repository path cite names from file frm, or None."""
    for base in ("", os.path.dirname(frm)):
        p = os.path.normpath(os.path.join(base, cite)) if not cite.startswith("/") else cite
        if p.startswith(("..", "/")):
            continue
        if p in FILES or p in DIRS:
            return p
    return None


_headings = {}


def has_section(md, num):
    if md not in _headings:
        with open(os.path.join(SRC, md), encoding="utf-8", errors="replace") as f:
            _headings[md] = [ln for ln in f.read().split("\n") if ln.startswith("#")]
    return any(re.match(r"#+\s+" + re.escape(num) + r"(?:[.\s]|$)", h) for h in _headings[md])


def check_text(path, line0, text, bad):
    text = ANGLE.sub(" ", URL.sub(" ", text))
    for m in OUTSIDE.finditer(text):
        line = line0 + text.count("\n", 0, m.start())
        bad.append(f"{path}:{line}: cites {m.group(1)}, a note outside this repository (bring the fact into docs/)")
    for m in PATH.finditer(text):
        cite = m.group(1).rstrip(".")
        ext = os.path.splitext(cite)[1]
        line = line0 + text.count("\n", 0, m.start())
        if "/" not in cite:
            if ext == ".md" or ext in (".c", ".h"):
                ok = resolve(cite, path) or (ext != ".md" and (cite in BASENAMES or cite in EXTERNAL))
            else:
                continue  # a bare json/py/txt name: a file of a checkpoint or of another project
        else:
            first = cite.split("/")[0]
            if ext != ".md" and first not in TOP and first not in ("..", "", "."):
                continue  # a path in another tree (a checkpoint, another project)
            ok = resolve(cite, path)
        if not ok:
            bad.append(f"{path}:{line}: cites {cite}, which is not a file of this repository")
            continue
        if ext == ".md":
            rest = text[m.end():]
            while True:
                s = SECTIONS.match(rest)
                if not s:
                    break
                if not has_section(ok, s.group(1)):
                    bad.append(f"{path}:{line}: cites {cite} §{s.group(1)}, which has no heading numbered so")
                rest = rest[s.end():]


def main():
    bad = []
    n = 0
    for path in sorted(FILES):
        if not path.endswith(TEXT_EXT) or path.startswith(SKIP_DIRS):
            continue
        if path.endswith(".txt") and os.path.basename(path) != "CMakeLists.txt":
            continue
        with open(os.path.join(SRC, path), encoding="utf-8", errors="replace") as f:
            text = f.read()
        n += 1
        for line0, piece in pieces(path, text):
            check_text(path, line0, piece, bad)
    for b in bad:
        print("FAIL", b)
    print(f"{n} files scanned, {len(bad)} citations that do not resolve")
    return 1 if bad else 0


sys.exit(main())
