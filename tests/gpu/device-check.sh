#!/usr/bin/env bash
# tests/gpu/device-check.sh — the one-shot check of the CUDA backend on a machine with a GPU
# (docs/GPU.md, "The device check"). Run from the root of a copy of the tree; build outputs may be absent.
#
#   tests/gpu/device-check.sh            summary in $OUT/device-check.json (OUT defaults to ./out)
#
# Stages, each under a time limit and recorded in the summary as soon as it ends (so a check killed
# halfway still leaves what it finished), within MTOK_DC_BUDGET seconds in all (470: under 8 minutes on
# one H100 with 16 cores; the tests leave 180 s for the benches; a stage that would not get its
# minimum is recorded as skipped):
#   probe      nvidia-smi: the GPU, driver, memory and clocks                              15 s
#   build      cmake -DMTOK_CUDA=ON (Release) into build-gpu; mtok and the cuda tests      170 s
#   devices    `mtok info`: the CUDA line; without a usable device the GPU stages skip
#   synth      in the background while the tests run: glm4-1b and glm4-9b-chat (~19 GB) into
#              /dev/shm (or the first directory with room), removed at the end
#   ctest      ctest -L cuda: kernels vs the CPU at small and GLM shapes (GLM-4V's tower too),
#              logits vs the CPU backend (text, and image prompts on glm4v-tiny), greedy tokens,
#              NIAH 1K-64K x 11 depths                                                      190 s
#   sanitizer  compute-sanitizer memcheck and racecheck on test_gpu_kernels --small, when the
#              tool is on this machine (it is not part of the toolkit installs mtok builds on; the
#              pip wheel nvidia-cuda-sanitizer-api carries it)                              90 s
#   bench-glm4-1b, bench-glm4-9b-chat
#              mtok bench --device cuda: decode and prefill against the copy bandwidth and the
#              cuBLASLt GEMM rate measured in the same run, stages, topk at 128K, the check
#                                                                                           60 s, 210 s
# Exit: 0 every stage passed and the GLM-4-9B-Chat targets were met; 1 a stage failed or ran out of
# time; 2 the stages passed but a target was missed (or not measured); 3 no usable GPU.
#
# Environment: OUT, MTOK_DC_BUDGET (s), MTOK_DC_JOBS (build jobs, default nproc), MTOK_DC_BUILD_DIR
# (default build-gpu), MTOK_DC_BUILD_S (the build's limit), MTOK_DC_CMAKE_ARGS (extra configure
# arguments), MTOK_DC_SYNTH_DIR; for trying
# the script itself through the CPU-executed build: MTOK_DC_MTOK (the binary of the devices, synth and
# bench stages, e.g. build/mtok_shim), MTOK_DC_PRESETS (default "glm4-1b glm4-9b-chat"),
# MTOK_DC_BENCH_ARGS (added to every bench), MTOK_DC_BENCH_S (every bench's limit).
set -u

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
fi
ROOT=$(pwd)
if [[ ! -f $ROOT/CMakeLists.txt || ! -f $ROOT/cuda/ck.h || ! -f $ROOT/tests/gpu/dc_summary.py ]]; then
    echo "device-check: run me from the root of the mtok tree (no CMakeLists.txt, cuda/ck.h here: $ROOT)" >&2
    exit 1
fi
OUT=${OUT:-$ROOT/out}
mkdir -p "$OUT/device-check-logs" || exit 1
OUT=$(cd "$OUT" && pwd)
LOGS=$OUT/device-check-logs
SUM=$OUT/device-check.json
BUILD=${MTOK_DC_BUILD_DIR:-$ROOT/build-gpu}
BUDGET=${MTOK_DC_BUDGET:-470}
JOBS=${MTOK_DC_JOBS:-$(nproc 2>/dev/null || echo 4)}
PY=$(command -v python3 || true)
T0=$(date +%s)
MTOK=${MTOK_DC_MTOK:-$BUILD/mtok}
PRESETS=${MTOK_DC_PRESETS:-glm4-1b glm4-9b-chat}
NO_GPU=0
SYNTH_PID=
SD=

note() { printf '[device-check %4ds] %s\n' "$(($(date +%s) - T0))" "$*"; }
left() { echo $((BUDGET - ($(date +%s) - T0))); }

# The summary: python3 rewrites one JSON file per call; without python3 a line of text per stage.
summary() {
    if [[ -n $PY ]]; then
        "$PY" "$ROOT/tests/gpu/dc_summary.py" "$@" --out "$SUM" || note "summary writer failed: $*"
    else
        echo "$*" >>"$OUT/device-check.txt"
    fi
}
record() { # name status seconds budget rc note [extra args]
    local name=$1 status=$2 secs=$3 budget=$4 rc=$5 text=$6
    shift 6
    summary stage --name "$name" --status "$status" --seconds "$secs" --budget "$budget" --rc "$rc" --note "$text" "$@"
    note "$name: $status (${secs} s, rc $rc)${text:+: $text}"
}

# run_limited SECONDS LOG CMD...: CMD in its own process group, killed as a group past SECONDS
# (exit 124); `timeout` alone would leave ctest's or a bench's children running.
run_limited() {
    local secs=$1 log=$2
    shift 2
    setsid "$@" >"$log" 2>&1 </dev/null &
    local pid=$! ticks=0
    while kill -0 "$pid" 2>/dev/null; do
        if ((ticks >= secs * 5)); then
            kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
            sleep 3
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
            wait "$pid" 2>/dev/null
            return 124
        fi
        sleep 0.2
        ticks=$((ticks + 1))
    done
    wait "$pid"
}

# stage NAME BUDGET MIN LOG CMD...: runs CMD within min(BUDGET, time left - RESERVE), RESERVE being
# the seconds kept for the benches after it; sets ST_RC, ST_DT, ST_LIMIT. Returns 1 (and records a
# skip) when less than MIN seconds are left.
RESERVE=0
stage() {
    local name=$1 budget=$2 min=$3 log=$4
    shift 4
    local rem
    rem=$(($(left) - RESERVE))
    ST_LIMIT=$((budget < rem ? budget : rem))
    if ((ST_LIMIT < min)); then
        record "$name" skipped 0 "$budget" 0 "out of time: $rem s left of $BUDGET, the stage needs at least $min s"
        return 1
    fi
    note "$name: starting (limit $ST_LIMIT s, log $log)"
    local s0
    s0=$(date +%s.%N)
    run_limited "$ST_LIMIT" "$log" "$@"
    ST_RC=$?
    ST_DT=$(awk -v a="$s0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    return 0
}
status_of() {
    if (($1 == 0)); then echo passed; elif (($1 == 124)); then echo timeout; else echo failed; fi
}

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    if [[ -n $SYNTH_PID ]]; then
        kill -TERM -- "-$SYNTH_PID" 2>/dev/null
        wait "$SYNTH_PID" 2>/dev/null
    fi
    [[ -n $SD && -d $SD ]] && rm -rf "$SD"
}
trap cleanup EXIT
trap 'note "interrupted"; exit 130' INT TERM

summary init --budget "$BUDGET" --build "$BUILD"
[[ -z $PY ]] && note "no python3: the summary is $OUT/device-check.txt and the cuda tests that are scripts fail"

# ---- probe ----
SMI=
if command -v nvidia-smi >/dev/null; then
    SMI=$(timeout 15 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit \
        --format=csv,noheader 2>"$LOGS/probe.log" | head -1)
    timeout 15 nvidia-smi >>"$LOGS/probe.log" 2>&1
    record probe passed 0 15 0 "${SMI:-nvidia-smi printed nothing}" --log "$LOGS/probe.log"
else
    record probe skipped 0 15 0 "no nvidia-smi on this machine"
fi
{ uname -a; nproc; free -g; df -h /dev/shm /tmp "$ROOT"; command -v nvcc && nvcc --version; cmake --version; } \
    >"$LOGS/host.log" 2>&1

# ---- build ----
if [[ -f $BUILD/CMakeCache.txt ]] && ! grep -qx "CMAKE_HOME_DIRECTORY:INTERNAL=$ROOT" "$BUILD/CMakeCache.txt"; then
    note "build: $BUILD was configured for another source tree: starting it afresh"
    rm -rf "$BUILD"
fi
BUILD_SH="cmake -S '$ROOT' -B '$BUILD' -DMTOK_CUDA=ON -DCMAKE_BUILD_TYPE=Release ${MTOK_DC_CMAKE_ARGS:-} &&
  targets='mtok_cli gpu_probe test_gpu_kernels'
  for t in test_gpu_k_attn test_gpu_k_vision cuda_resources; do
    cmake --build '$BUILD' --target help | grep -qw \"\$t\" && targets=\"\$targets \$t\"
  done
  echo \"building: \$targets\"
  cmake --build '$BUILD' -j $JOBS --target \$targets"
BUILD_NOTE=
BUILD_S=${MTOK_DC_BUILD_S:-170}
if stage build "$BUILD_S" 60 "$LOGS/build.log" bash -c "$BUILD_SH"; then
    record build "$(status_of "$ST_RC")" "$ST_DT" "$BUILD_S" "$ST_RC" "$BUILD_NOTE" --log "$LOGS/build.log"
fi
if [[ ! -x $MTOK || ${ST_RC:-1} -ne 0 ]]; then
    note "build: no usable mtok; the remaining stages cannot run"
    [[ -n $PY ]] && "$PY" "$ROOT/tests/gpu/dc_summary.py" finish --out "$SUM"
    exit 1
fi

# ---- devices ----
CUDA_LINE=$("$MTOK" info 2>&1 | grep '^cuda:' | head -1)
COUNT=$(sed -n 's/.*; \([0-9][0-9]*\) devices\{0,1\}:.*/\1/p' <<<"$CUDA_LINE")
COUNT=${COUNT:-0}
summary gpu --smi "$SMI" --info "$CUDA_LINE" --count "$COUNT"
note "mtok info: $CUDA_LINE"
((COUNT < 1)) && NO_GPU=1

# ---- synth, in the background while the tests run ----
pick_synth_dir() {
    local d need=$((2 * 1024 * 1024)) # KiB
    [[ $PRESETS == *9b* ]] && need=$((26 * 1024 * 1024)) # the 9B checkpoint (~19 GB) and the 1B one, with room to spare
    for d in ${MTOK_DC_SYNTH_DIR:-} /dev/shm "${TMPDIR:-/tmp}" /var/tmp /tmp "$ROOT"; do
        [[ -n $d && -d $d && -w $d ]] || continue
        (($(df -Pk "$d" | awk 'NR == 2 { print $4 }') >= need)) && { echo "$d"; return 0; }
    done
    return 1
}
if ((NO_GPU)); then
    record synth skipped 0 0 0 "no usable GPU ($CUDA_LINE)"
elif base=$(pick_synth_dir); then
    SD=$(mktemp -d "$base/mtok-dc-XXXXXX")
    note "synth: $PRESETS into $SD (background)"
    # half the cores: the tests running beside it need the rest for their CPU references
    SYNTH_SH="export OMP_NUM_THREADS=$(((JOBS + 1) / 2))"
    for p in $PRESETS; do
        SYNTH_SH+="; '$MTOK' synth --preset $p --out '$SD/$p' && touch '$SD/$p.done'"
    done
    setsid bash -c "$SYNTH_SH" >"$LOGS/synth.log" 2>&1 </dev/null &
    SYNTH_PID=$!
    SYNTH_T0=$(date +%s)
else
    record synth failed 0 0 1 "no directory with 26 GB free among /dev/shm, \$TMPDIR, /var/tmp, /tmp and the tree"
fi

# ---- ctest -L cuda ----
RESERVE=$((NO_GPU ? 0 : 180)) # the benches' minimum: 30 s for glm4-1b, 150 s for the 9B
if stage ctest 190 30 "$LOGS/ctest.log" bash -c "cd '$BUILD' && ctest -L '^cuda\$' --output-on-failure"; then
    st=$(status_of "$ST_RC")
    ((NO_GPU && ST_RC == 0)) && st=skipped
    record ctest "$st" "$ST_DT" 190 "$ST_RC" "$( ((NO_GPU)) && echo "no usable GPU: every cuda test exits 77")" \
        --log "$LOGS/ctest.log" --ctest-log "$LOGS/ctest.log"
fi

# ---- compute-sanitizer ----
SAN=$(command -v compute-sanitizer || true)
for d in "${CUDA_HOME:-}" /usr/local/cuda; do
    [[ -z $SAN && -n $d && -x $d/bin/compute-sanitizer ]] && SAN=$d/bin/compute-sanitizer
done
if [[ -z $SAN && -n $PY ]]; then # the pip wheel nvidia-cuda-sanitizer-api
    w=$("$PY" -c 'import nvidia.cuda_sanitizer_api as m; print(list(m.__path__)[0])' 2>/dev/null)
    [[ -n $w && -x $w/bin/compute-sanitizer ]] && SAN=$w/bin/compute-sanitizer
fi
if ((NO_GPU)); then
    record sanitizer skipped 0 90 0 "no usable GPU"
elif [[ -z $SAN ]]; then
    record sanitizer skipped 0 90 0 "compute-sanitizer not found (not in this CUDA install; the pip wheel \
nvidia-cuda-sanitizer-api carries it, and this machine has no network to fetch it)"
else
    SAN_SH="'$SAN' --tool memcheck --error-exitcode 99 '$BUILD/tests/gpu/test_gpu_kernels' --small &&
            '$SAN' --tool racecheck --error-exitcode 99 '$BUILD/tests/gpu/test_gpu_kernels' --small"
    if stage sanitizer 90 20 "$LOGS/sanitizer.log" bash -c "$SAN_SH"; then
        record sanitizer "$(status_of "$ST_RC")" "$ST_DT" 90 "$ST_RC" "$SAN: memcheck, racecheck" --log "$LOGS/sanitizer.log"
    fi
fi

# ---- benches ----
wait_synth() { # preset: waits for the background synth of preset within the time left
    local p=$1
    while [[ ! -e $SD/$p.done ]] && kill -0 "$SYNTH_PID" 2>/dev/null && (($(left) > 30)); do sleep 1; done
    [[ -e $SD/$p.done ]]
}
bench() { # preset budget min [extra bench args]
    local p=$1 budget=$2 min=$3
    shift 3
    if ((NO_GPU)) || [[ -z $SD ]]; then
        record "bench-$p" skipped 0 "$budget" 0 "$( ((NO_GPU)) && echo "no usable GPU" || echo "no synthesized checkpoint")"
        return
    fi
    if ! wait_synth "$p"; then
        record "bench-$p" failed 0 "$budget" 1 "synth of $p did not finish ($(tail -c 300 "$LOGS/synth.log"))" \
            --log "$LOGS/synth.log"
        return
    fi
    note "synth: $p ready after $(($(date +%s) - SYNTH_T0)) s"
    local extra=()
    if (($(left) < 150)) && [[ $p == glm4-9b-chat ]]; then # not enough time to fill 128K: a shorter topk depth
        extra=(--topk-depths "4096,32768")
    fi
    # shellcheck disable=SC2086 # MTOK_DC_BENCH_ARGS is a list of words
    if stage "bench-$p" "$budget" "$min" "$LOGS/bench-$p.log" "$MTOK" bench --device cuda -m "$SD/$p" --json \
        --json-out "$OUT/bench-$p.json" "${extra[@]}" ${MTOK_DC_BENCH_ARGS:-} "$@"; then
        record "bench-$p" "$(status_of "$ST_RC")" "$ST_DT" "$budget" "$ST_RC" "${extra[*]:+shortened: ${extra[*]}}" \
            --log "$LOGS/bench-$p.log" --json "$OUT/bench-$p.json"
    fi
    rm -rf "${SD:?}/$p" # its RAM (tmpfs) back before the next one
}
for p in $PRESETS; do
    case $p in
    glm4-9b-chat*) RESERVE=0 bench "$p" "${MTOK_DC_BENCH_S:-210}" 60 ;;
    *) RESERVE=$([[ $PRESETS == *9b* ]] && echo 150 || echo 0) bench "$p" "${MTOK_DC_BENCH_S:-60}" 20 ;;
    esac
done

if [[ -z $PY ]]; then
    note "no python3: no summary could be computed (see $OUT/device-check.txt)"
    exit 1
fi
"$PY" "$ROOT/tests/gpu/dc_summary.py" finish --out "$SUM"
rc=$?
note "summary: $SUM"
exit $rc
