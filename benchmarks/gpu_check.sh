#!/usr/bin/env bash
# The GPU check, prepared for a session that is lent a GPU machine (an H100 or H200 for ~15 minutes of device time
# in all, 10 minutes a command, no network there; it gets a copy of the working tree of at most 64 MiB):
#   1. env: nvidia-smi -L, torch and CUDA versions;
#   2. overhead: benchmarks/loop_overhead.py on cuda in fp32 and in bf16 (plain, kd; all 50k images, 1 epoch,
#      3 counted repetitions after 1 warm-up: on an H100 a ResNet-8 step takes a few ms, 391 steps a run);
#   3. paper: configs/paper/cifar10-resnet50-resnet18-check.yaml (the paper's ResNet-50 -> ResNet-18 on all of
#      CIFAR-10, one seed, bf16; teacher, plain, kd from the teacher cache, the selective arm `auto`);
#   4. compile: loop_overhead.py --compile in bf16, with the time that is left.
# Each part runs under its own time limit inside one budget (GPU_CHECK_BUDGET_S, default 570 s: one command's 600 s
# less a margin), so a slow or failing part costs only itself; the script goes on to the next and exits 1 at the end
# if any failed. Everything it writes lands in $OUT (the folder the device tool brings back: at most 8 files there):
# gpu_check.log (this transcript: versions, every ratio table, the paper headline), one log per part,
# paper-report.md and paper-out.tgz (leankd's --out less models and caches: report.md/.html, results.db, configs).
#
# Before the lent session, here (with PyPI and ../shared/data):
#   bash benchmarks/gpu_check.sh prepare      # build/gpu-check/: CIFAR-10 as JPEGs (56 MB; gpu_data.py) + the
#                                             # wheels the GPU image lacks (pydantic and its needs, cp312)
# Then, with the device tool (build/ is ignored by git, so it travels only when carried):
#   run(command="bash benchmarks/gpu_check.sh", carry=["build/gpu-check"], timeout_s=600)
# There, python3 is the image's Python with CUDA torch (a .venv made here would hold the CPU wheel and is too big
# to travel); leankd is imported from src/ (PYTHONPATH), pydantic from the carried wheels. ../shared/data does not
# travel: the data is decoded from build/gpu-check/cifar10-jpeg.npz (or GPU_CHECK_DATA_DIR names a data dir).
#
# Assumptions behind the sizes (none measured on a GPU here yet): ResNet-50 at batch 64 on an H100 takes 10-25 s
# an epoch of 50k images in bf16 (launch-bound at that batch), ResNet-18 a third of that, so teacher (5 epochs) +
# plain + kd (cache build: 3 views) + auto (3 epochs each; ranking on 512 images) take 2.5-5 minutes, and each job
# adds ~10 s of start-up, evaluation and latency metering. GPU_CHECK_TEACHER_EPOCHS / GPU_CHECK_EPOCHS /
# GPU_CHECK_PRECISION (bf16; fp16 = the paper's) / GPU_CHECK_PARTS ("overhead paper compile") change them.
#
# GPU_CHECK_DRY=1: the same commands on the CPU, shrunk (512 images, 1 repetition, leankd run --smoke), to check
# here that every command and override parses and runs; compile is left out unless GPU_CHECK_PARTS names it.
set -u
cd "$(dirname "$0")/.."
REPO=$(pwd)
PACK=$REPO/build/gpu-check
DRY=${GPU_CHECK_DRY:-0}
BUDGET=${GPU_CHECK_BUDGET_S:-$([ "$DRY" = 1 ] && echo 1200 || echo 570)}  # dry: a shared 2-core CPU is slow
OUT=${OUT:-$REPO/build/gpu-check-out}
WORK=${GPU_CHECK_WORK:-${TMPDIR:-/tmp}/leankd-gpu-check}
mkdir -p "$OUT" "$WORK"
LOG=$OUT/gpu_check.log
FAILED=()
PY=

say() { echo "[gpu_check $(date +%H:%M:%S) +${SECONDS}s] $*" | tee -a "$LOG"; }

if [ "${1:-}" = prepare ]; then  # here, before the lent session: what the GPU machine cannot fetch
    PY=${PYTHON:-$REPO/.venv/bin/python}
    "$PY" benchmarks/gpu_data.py pack "${LEANKD_DATA_DIR:-../shared/data}" "$PACK/cifar10-jpeg.npz" || exit 1
    # the image's own Python 3.12 has torch, numpy, yaml, tqdm, scipy, sklearn, matplotlib, safetensors: not pydantic
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$PACK/wheels" pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
        typing_extensions==4.16.0 || exit 1
    du -sh "$PACK"
    exit 0
fi

# run NAME LIMIT_S CMD...: one part, under the smaller of LIMIT_S and the budget left; its output to $OUT/NAME.log
run() {
    local name=$1 limit=$2 left=$((BUDGET - SECONDS))
    shift 2
    [ "$limit" -gt "$left" ] && limit=$left
    if [ "$limit" -lt 30 ]; then
        say "$name: skipped (${left}s of the budget left)"; FAILED+=("$name(skipped)"); return 1
    fi
    say "$name: start (limit ${limit}s): $*"
    timeout --kill-after=15 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    say "$name: exit $rc$([ $rc -eq 124 ] && echo ' (time limit)')"
    [ $rc -eq 0 ] || FAILED+=("$name")
    return $rc
}

# ---- 1. environment: which Python, torch, GPU ----------------------------------------------------------------------
: >"$LOG"
say "repo $REPO, out $OUT, work $WORK, dry $DRY, budget ${BUDGET}s"
{ nvidia-smi -L && nvidia-smi --query-gpu=driver_version,memory.total,clocks.max.sm --format=csv; } 2>&1 | tee -a "$LOG"
for cand in ${PYTHON:-} "$REPO/.venv/bin/python" python3; do  # the first whose torch fits the mode
    if [ "$DRY" = 1 ] && "$cand" -c "import torch" 2>/dev/null; then PY=$cand; break; fi
    if "$cand" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then PY=$cand; break; fi
done
if [ -z "${PY:-}" ]; then say "no Python with torch$([ "$DRY" = 1 ] || echo ' and CUDA') found; stopping"; exit 1; fi
export PYTHONPATH=$REPO/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1  # leankd from this tree, not installed
if ! "$PY" -c "import pydantic" 2>/dev/null; then
    say "installing the carried wheels ($PACK/wheels) into $WORK/site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
        "$PACK"/wheels/*.whl 2>&1 | tee -a "$LOG"
    export PYTHONPATH=$WORK/site:$PYTHONPATH
fi
"$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import platform, torch
print(f"python {platform.python_version()} ({__import__('sys').executable}), torch {torch.__version__}, "
      f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"{p.name}: {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs, capability {p.major}.{p.minor}")
import leankd, leankd.api, leankd.jobs.runner, pydantic  # all a job imports: a missing package shows here
print(f"leankd from {leankd.__file__}, pydantic {pydantic.VERSION}")
EOF
if [ "${PIPESTATUS[0]}" -ne 0 ]; then say "the environment check failed (above); stopping"; exit 1; fi

# ---- data: a data dir holding cifar10/cifar10_{train,test}.npz ------------------------------------------------------
DATA=${GPU_CHECK_DATA_DIR:-}
if [ -z "$DATA" ] && [ -f "$PACK/cifar10-jpeg.npz" ]; then
    DATA=$WORK/data
    [ -f "$DATA/cifar10/cifar10_test.npz" ] || "$PY" benchmarks/gpu_data.py unpack "$PACK/cifar10-jpeg.npz" "$DATA" \
        2>&1 | tee -a "$LOG"
fi
for cand in "$DATA" "${LEANKD_DATA_DIR:-}" "$REPO/../shared/data" "$REPO/shared/data"; do
    if [ -n "$cand" ] && [ -f "$cand/cifar10/cifar10_train.npz" ] && [ -f "$cand/cifar10/cifar10_test.npz" ]; then
        DATA=$cand; break
    fi
    DATA=
done
if [ -z "$DATA" ]; then
    say "no CIFAR-10 found: run 'bash benchmarks/gpu_check.sh prepare' here and carry build/gpu-check; stopping"
    exit 1
fi
say "data: $DATA"

# ---- sizes: the GPU check, or its dry run on the CPU -----------------------------------------------------------------
if [ "$DRY" = 1 ]; then
    DEVICE=cpu
    OVERHEAD=(--devices cpu --train-limit 512 --test-limit 64 --reps 1 --warmup 0 --arms plain,kd)
    COMPILE=(--devices cpu --train-limit 256 --test-limit 64 --reps 1 --warmup 0 --arms plain)
    PAPER=(--smoke device=cpu precision=fp32 ranking.samples=8)
    PAPER_LIMIT=600
    PARTS=${GPU_CHECK_PARTS:-overhead paper}
else
    DEVICE=cuda
    OVERHEAD=(--devices cuda --train-limit 50000 --epochs 1 --reps 3 --warmup 1 --arms plain,kd)
    COMPILE=(--devices cuda --train-limit 50000 --epochs 1 --reps 2 --warmup 1 --arms plain,kd)
    PAPER=(device=cuda "precision=${GPU_CHECK_PRECISION:-bf16}" "teacher.train.epochs=${GPU_CHECK_TEACHER_EPOCHS:-5}"
           "train.epochs=${GPU_CHECK_EPOCHS:-3}")
    PAPER_LIMIT=300
    PARTS=${GPU_CHECK_PARTS:-overhead paper compile}
fi
BENCH=("$PY" benchmarks/loop_overhead.py --data-dir "$DATA")

# ---- 2. loop overhead, fp32 and bf16 ---------------------------------------------------------------------------------
if [[ " $PARTS " == *" overhead "* ]]; then
    run overhead-fp32 120 "${BENCH[@]}" "${OVERHEAD[@]}" --precision fp32
    run overhead-bf16 120 "${BENCH[@]}" "${OVERHEAD[@]}" --precision bf16
fi

# ---- 3. the paper setting, shortened ---------------------------------------------------------------------------------
if [[ " $PARTS " == *" paper "* ]]; then
    PAPER_OUT=$WORK/paper-out
    run paper "$PAPER_LIMIT" "$PY" -m leankd.cli run configs/paper/cifar10-resnet50-resnet18-check.yaml \
        --data-dir "$DATA" --out "$PAPER_OUT" "${PAPER[@]}"
    if [ -f "$PAPER_OUT/results.db" ]; then  # whatever jobs finished, also after a time limit
        timeout 60 "$PY" -m leankd.cli report --out "$PAPER_OUT" >"$WORK/report.txt" 2>&1
        cp "$PAPER_OUT/report.md" "$OUT/paper-report.md" 2>/dev/null
        tar -czf "$OUT/paper-out.tgz" -C "$PAPER_OUT" --exclude=cache --exclude=.tmp --exclude='*.safetensors' \
            --exclude='*.npy' --exclude='*.ckpt*' --exclude='*.lock' . 2>>"$LOG"  # models and caches stay behind
    fi
fi

# ---- 4. torch.compile, with the time left ----------------------------------------------------------------------------
if [[ " $PARTS " == *" compile "* ]]; then
    run overhead-compile-bf16 300 "${BENCH[@]}" "${COMPILE[@]}" --precision bf16 --compile
fi

# ---- the transcript: every ratio table and the paper's headline ------------------------------------------------------
for f in "$OUT"/overhead-*.log; do
    [ -f "$f" ] || continue
    { echo; echo "== $(basename "$f")"; tr '\r' '\n' <"$f" | grep -E '^(\||== |cuda|cpu|note|rep |summary)'; } >>"$LOG"
done
[ -f "$WORK/report.txt" ] && { echo; echo "== paper (leankd report)"; cat "$WORK/report.txt"; } >>"$LOG"
if [ ${#FAILED[@]} -gt 0 ]; then say "done on $DEVICE; failed or skipped: ${FAILED[*]}"; exit 1; fi
say "done on $DEVICE; every part passed"
