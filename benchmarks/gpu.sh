#!/usr/bin/env bash
# The whole GPU measurement of issue 9 in one command, on one H100 / H200 (at most ~10 minutes):
#
#     bash benchmarks/gpu.sh                      # from the repository root (or anywhere: it cds there)
#
# Writes benchmarks/results_cuda.json (GPU name, torch version, date, every figure) after every step,
# prints the table at the end, and copies the JSON, this log and the runs' logs to $OUT when set.
# Steps, in order of priority (figures at CoalAD size unless said otherwise):
#   data           the generated sets: 2,490 / 1,754 and 249 / 175 images, 512 px PNG (one process per core)
#   golden         usad.run on the golden fixture: cpu fp32, cuda fp32, cuda bf16 against the authors' reference
#                  (and cuda against cpu); pytest tests/models/usad/test_golden.py with USAD_TEST_DEVICE=$DEVICE
#   run            the floor (one start-up + the three backbones' forward passes) and python -m usad.run, fp32
#   tenth          1/10 scale: usad.run (twice: all, then evaluation alone) and the authors' four scripts
#   scripts        the four scripts at CoalAD size
#   bf16           the floor and usad.run with precision=bf16
#   tenth_scripts  1/10 scale: our four scripts
#   compare        python -m usad.compare on tests/golden, every method (their tiny settings): train / predict per method
#   npgmf csad     benchmarks/bench_npgmf.py and bench_csad.py at full size on the GPU (the papers' 21 ms and 8.9 ms an image)
# A step starts only if its estimate fits in what is left of USAD_BENCH_BUDGET_S; a step still running at
# USAD_BENCH_HARD_S is stopped (the figures of the steps before it are kept).
#
# Environment (all optional):
#   DEVICE=cuda                 cpu: dry run of every step here (with USAD_BENCH_SCALE=tiny)
#   USAD_BENCH_SCALE=full       tiny: 16 / 8 images and tiny backbones everywhere (dry runs; writes
#                               $USAD_BENCH_WORK/results_dry.json, never benchmarks/results_cuda.json)
#   USAD_BENCH_STEPS=data,golden,run,tenth,scripts,bf16,tenth_scripts,compare,npgmf,csad
#   USAD_BENCH_BUDGET_S=530  USAD_BENCH_HARD_S=budget+45 (3600 and more for USAD_BENCH_SCALE=tiny)
#   USAD_AUTHORS=../shared/usad-authors   USAD_GOLDEN=../shared/golden   (each falls back to ./shared/...:
#                               on the lent GPU machine ../shared is not there; copy both into the checkout's
#                               shared/ folder first, which travels: cp -r ../shared/golden ../shared/usad-authors shared/)
#   USAD_BENCH_WORK=/tmp/usad-bench-gpu   (sets, models, logs; kept, so a second call reuses the sets)
#   PYTHON                      the interpreter (default: the first of python3, python that imports torch)
set -u
cd "$(dirname "$0")/.." || exit 2
T0=$(date +%s)
DEVICE=${DEVICE:-cuda}
SCALE=${USAD_BENCH_SCALE:-full}
STEPS=${USAD_BENCH_STEPS:-data,golden,run,tenth,scripts,bf16,tenth_scripts,compare,npgmf,csad}
if [ "$SCALE" = tiny ]; then DEFAULT_BUDGET=3600; else DEFAULT_BUDGET=530; fi  # a dry run on 2 cores is slower
BUDGET=${USAD_BENCH_BUDGET_S:-$DEFAULT_BUDGET}
HARD=${USAD_BENCH_HARD_S:-$(( BUDGET + 45 ))}  # 575 s: + 15 s kill-after + the table, under the lent machine's 600 s per command
WORK=${USAD_BENCH_WORK:-/tmp/usad-bench-gpu}
mkdir -p "$WORK" || exit 2
LOG=$WORK/gpu.log
exec > >(tee -a "$LOG") 2>&1
echo "== benchmarks/gpu.sh $(date -u '+%Y-%m-%d %H:%M UTC'): DEVICE=$DEVICE scale=$SCALE budget=${BUDGET}s hard=${HARD}s"

pick_dir() {  # the first folder among its arguments that holds file $1 (else the first one named)
  local file=$1 first=""; shift
  for d in "$@"; do
    [ -z "$d" ] && continue
    [ -z "$first" ] && first=$d
    [ -e "$d/$file" ] && { (cd "$d" && pwd); return; }
  done
  echo "$first"
}
export USAD_AUTHORS=$(pick_dir train_pc.py "${USAD_AUTHORS:-}" ../shared/usad-authors shared/usad-authors)
export USAD_GOLDEN=$(pick_dir reference.npz "${USAD_GOLDEN:-}" ../shared/golden shared/golden)
found() { [ -e "$1/$2" ] && echo "$1" || echo "$1 (MISSING)"; }
echo "authors' code: $(found "$USAD_AUTHORS" train_pc.py); golden fixture: $(found "$USAD_GOLDEN" reference.npz)"

# ---------------------------------------------------------------- the interpreter and its packages
PY=""
for c in ${PYTHON:-} python3 python; do
  if command -v "$c" >/dev/null 2>&1 && "$c" -c "import torch" >/dev/null 2>&1; then PY=$c; break; fi
done
missing() {
  "${PY:-python3}" - <<'EOF'
import importlib.util
need = ["torch", "torchvision", "timm", "sklearn", "scipy", "cv2", "yaml", "tqdm", "matplotlib", "numpy", "PIL", "pytest"]
print(" ".join(m for m in need if importlib.util.find_spec(m) is None))
EOF
}
MISSING=$(missing 2>/dev/null || echo torch)
if [ -z "$PY" ] || [ -n "$MISSING" ]; then
  echo "missing Python modules: ${MISSING:-torch}; trying pip install -r requirements.txt"
  "${PY:-python3}" -m pip install -q --retries 1 --timeout 20 -r requirements.txt pytest || echo "pip install failed"
  for c in ${PYTHON:-} python3 python; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c "import torch" >/dev/null 2>&1; then PY=$c; break; fi
  done
  MISSING=$(missing 2>/dev/null || echo torch)
fi
if [ -z "$PY" ] || [ -n "$(echo " $MISSING " | sed 's/ pytest / /; s/^ *//; s/ *$//')" ]; then
  echo "cannot run: missing ${MISSING:-torch} (no network? carry wheels, see /work/.library/device/README.md)"; exit 2
fi
echo "python: $(command -v "$PY") ($("$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())'))"
if [ "$DEVICE" != cpu ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "DEVICE=$DEVICE but torch sees no CUDA GPU here (DEVICE=cpu USAD_BENCH_SCALE=tiny for a dry run)"; exit 2
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

# ---------------------------------------------------------------- the steps
if [ "$SCALE" = tiny ]; then
  RESULTS=$WORK/results_dry.json
  SIZES=(--scale dry --tenth-scale dry --backbones tiny --tenth-backbones tiny)
else
  RESULTS=$WORK/results_cuda.json
  SIZES=()
fi
BENCH=("$PY" benchmarks/run.py --device "$DEVICE" --work "$WORK" --out "$RESULTS" --update --repeat 1 --no-table --authors "$USAD_AUTHORS" ${SIZES[@]+"${SIZES[@]}"})
declare -A EST=([data]=45 [golden]=120 [run]=180 [tenth]=210 [scripts]=160 [bf16]=130 [tenth_scripts]=90 [compare]=300 [npgmf]=120 [csad]=120)  # s, H100, upper
for s in ${STEPS//,/ }; do
  [ -n "${EST[$s]+x}" ] || { echo "unknown step '$s' in USAD_BENCH_STEPS: choose from ${!EST[*]}"; exit 2; }
done

publish() {  # the JSON beside the code (not for dry runs) and, on the lent machine, in $OUT
  [ -f "$RESULTS" ] || return 0
  [ "$SCALE" = tiny ] || cp "$RESULTS" benchmarks/results_cuda.json
  if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
    cp "$RESULTS" "$LOG" "$OUT/" 2>/dev/null
    tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs 2>/dev/null
  fi
}

step() {  # step NAME ARGS...: run benchmarks/run.py ARGS if the step is asked for and fits
  step_cmd "$1" "${BENCH[@]}" "${@:2}"
}

step_cmd() {  # step_cmd NAME COMMAND...: run COMMAND if the step is asked for and fits
  local name=$1; shift
  case ",$STEPS," in *",$name,"*) ;; *) return 0 ;; esac
  local now=$(( $(date +%s) - T0 )) est=${EST[$name]}
  if [ $(( now + est )) -gt "$BUDGET" ] || [ $(( HARD - now )) -lt 10 ]; then
    echo "== skipped $name: ${now}s spent, estimate ${est}s, budget ${BUDGET}s (USAD_BENCH_STEPS=$name to run it alone)"
    return 0
  fi
  echo "== $name (at ${now}s, estimate ${est}s)"
  timeout --kill-after=15 $(( HARD - now )) "$@"
  local rc=$?
  case $rc in
    0) ;;
    124|137) echo "== $name stopped at the hard limit ${HARD}s" ;;
    *) echo "== $name exited with $rc" ;;
  esac
  publish
  echo "== $name done at $(( $(date +%s) - T0 ))s"
}

# A fresh results file per work folder's first run; later calls on the same machine add to it.
[ -f "$RESULTS" ] || echo '{}' > "$RESULTS"
step data          --only data
step golden        --only golden --precision fp32,bf16
step run           --only run --parts floor,usad_run --precision fp32
step tenth         --only tenth --tenth-parts usad_run,authors
step scripts       --only run --parts scripts
step bf16          --only run --parts floor,usad_run --precision bf16
step tenth_scripts --only tenth --tenth-parts scripts
step compare       --only compare
for m in npgmf csad; do
  [ -f "benchmarks/bench_$m.py" ] && step_cmd $m "$PY" "benchmarks/bench_$m.py" --scale full --device "$DEVICE" --out "$WORK/bench_$m.json"
  [ -n "${OUT:-}" ] && [ -f "$WORK/bench_$m.json" ] && cp "$WORK/bench_$m.json" "$OUT/"
done
echo
"$PY" benchmarks/run.py --table "$RESULTS"
publish
echo "== gpu.sh done in $(( $(date +%s) - T0 ))s; results: $RESULTS$([ "$SCALE" = tiny ] || echo ' and benchmarks/results_cuda.json')"
