#!/usr/bin/env bash
# Replays or runs the libFuzzer targets of a fuzz build (docs/FUZZING.md).
#   tests/fuzz/run.sh BUILD replay                     every input of corpus/ and regressions/, once
#   tests/fuzz/run.sh BUILD fuzz SECONDS [TARGET...]   each target (all by default) for SECONDS
# BUILD is a build directory configured with CC=clang -DMTOK_FUZZ=ON (cmake --build BUILD --target
# fuzz_all). TARGET is a short name (config, safetensors, ...) or fuzz_NAME. Fuzzing starts from the
# committed corpus and regression inputs, writes what it finds to $FUZZ_OUT/corpus/NAME (default
# BUILD/fuzz-out; never into the source tree), a failing input to $FUZZ_OUT/artifacts/NAME/ and
# libFuzzer's output to $FUZZ_OUT/logs/NAME.log. FUZZ_JOBS=N runs N targets at a time (default 1).
# Exit status: 0 when no target failed, 1 otherwise.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 2 ] || usage
build="$1" mode="$2"
shift 2
bindir="$build/tests/fuzz"
[ -d "$bindir" ] || { echo "run.sh: $bindir: no fuzz build there (CC=clang cmake -DMTOK_FUZZ=ON)" >&2; exit 2; }
out="${FUZZ_OUT:-$build/fuzz-out}"
jobs="${FUZZ_JOBS:-1}"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:symbolize=1:allocator_may_return_null=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
# Limits: a parser must answer a bad file in well under a second and without a gigabyte (a 30 s input
# or a 2.5 GB allocation is reported as a finding, like a crash).
common=(-timeout=30 -rss_limit_mb=2560 -malloc_limit_mb=2560)

case "$mode" in
replay) ;;
fuzz) [ $# -ge 1 ] || usage; seconds="$1"; shift ;;
*) usage ;;
esac
targets=()
if [ $# -gt 0 ]; then
  for t in "$@"; do targets+=("${t#fuzz_}"); done
else
  for b in "$bindir"/fuzz_*; do [ -x "$b" ] && [ -f "$b" ] && targets+=("${b#"$bindir"/fuzz_}"); done
fi
[ ${#targets[@]} -gt 0 ] || { echo "run.sh: no fuzz targets in $bindir" >&2; exit 2; }
mkdir -p "$out/logs"

dict_for() {  # the JSON dictionary helps every target but the binary KV files and the tiktoken ranks
  case "$1" in kvfile|tok_model) ;; *) echo "-dict=$here/json.dict" ;; esac
}

# One target; its report goes to $out/logs/T.result (printed when it ends), 1 on failure.
one() {
  local t="$1" bin="$bindir/fuzz_$1" log="$out/logs/$1.log" res="$out/logs/$1.result"
  local seeds=() d files=()
  [ -x "$bin" ] || { echo "== fuzz_$t: no such target in $bindir" >"$res"; return 1; }
  for d in "$here/corpus/$t" "$here/regressions/$t"; do [ -d "$d" ] && seeds+=("$d"); done
  mkdir -p "$out/artifacts/$t"
  if [ "$mode" = replay ]; then
    mapfile -t files < <(find "${seeds[@]}" -type f 2>/dev/null | sort)
    if [ ${#files[@]} -eq 0 ]; then echo "== fuzz_$t: no inputs to replay" >"$res"; return 0; fi
    if "$bin" "${common[@]}" -artifact_prefix="$out/artifacts/$t/" "${files[@]}" >"$log" 2>&1; then
      echo "== fuzz_$t: replayed ${#files[@]} inputs" >"$res"
      return 0
    fi
  else
    mkdir -p "$out/corpus/$t"
    # shellcheck disable=SC2046
    if "$bin" "${common[@]}" $(dict_for "$t") -max_total_time="$seconds" -print_final_stats=1 \
         -artifact_prefix="$out/artifacts/$t/" "$out/corpus/$t" "${seeds[@]}" >"$log" 2>&1; then
      { printf '== fuzz_%s: %s s: ' "$t" "$seconds"
        grep -E '^#[0-9]+.*DONE' "$log" | sed 's/ *rss:.*//'; } >"$res"
      return 0
    fi
  fi
  { echo "== fuzz_$t FAILED ($mode); the end of $log:"
    tail -n 80 "$log"
    echo "== fuzz_$t: failing input(s):"
    find "$out/artifacts/$t" -type f | head -5; } >"$res"
  return 1
}

failed=()
declare -A pid_of=()
finish() {  # waits for one running target and reports it
  local p t
  wait -n
  for t in "${!pid_of[@]}"; do
    p="${pid_of[$t]}"
    if ! kill -0 "$p" 2>/dev/null; then
      wait "$p" || failed+=("$t")
      cat "$out/logs/$t.result"
      unset "pid_of[$t]"
    fi
  done
}
for t in "${targets[@]}"; do
  while [ ${#pid_of[@]} -ge "$jobs" ]; do finish; done
  [ "$mode" = fuzz ] && echo "== fuzz_$t: fuzzing for $seconds s (log: $out/logs/$t.log)"
  one "$t" &
  pid_of[$t]=$!
done
while [ ${#pid_of[@]} -gt 0 ]; do finish; done
if [ ${#failed[@]} -gt 0 ]; then
  echo "run.sh: failed: ${failed[*]}" >&2
  exit 1
fi
echo "run.sh: $mode: ${#targets[@]} targets passed"
