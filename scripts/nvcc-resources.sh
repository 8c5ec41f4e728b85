#!/usr/bin/env bash
# The CUDA_COMPILER_LAUNCHER of mtok_cuda (CMakeLists.txt, "CUDA backend"): runs the nvcc command it is
# given and keeps what ptxas reports for the object (--resource-usage: registers, shared memory, stack,
# spills of every kernel and architecture) in <object>.res, for the resource gate
# (scripts/cuda-resources.py against cuda/resources.txt). Capturing the report of the compile that runs
# anyway costs nothing; a second nvcc pass just for the figures would run ptxas twice.
#
# The "ptxas info" lines go to the .res file only (they are 4 lines per kernel and architecture and would
# bury the build log); everything else (warnings, errors) passes through. When the compile fails, all of
# its output is shown and no .res is left behind, so the gate never reads a stale report.
set -u
obj=""
prev=""
for a in "$@"; do
  [ "$prev" = "-o" ] && obj="$a"
  prev="$a"
done
log="$(mktemp)"
"$@" >"$log" 2>&1
rc=$?
if [ "$rc" -ne 0 ] || [ -z "$obj" ]; then
  cat "$log" >&2
  [ -n "$obj" ] && rm -f "$obj.res"
  rm -f "$log"
  exit "$rc"
fi
# a "Function properties" line is followed by its "N bytes stack frame, ..." line: both are ptxas's
grep -E '^(ptxas info|[[:space:]]+[0-9]+ bytes stack frame)' "$log" >"$obj.res.tmp"
mv -f "$obj.res.tmp" "$obj.res"
grep -v -E '^(ptxas info|[[:space:]]+[0-9]+ bytes stack frame)' "$log" >&2
rm -f "$log"
exit 0
