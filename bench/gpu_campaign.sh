#!/usr/bin/env bash
# The one prepared GPU campaign (#29): every open GPU question in one run of at most ~8 minutes on a lent
# H100/H200, then nothing left to guess. From the repo root:
#
#   bash bench/gpu_campaign.sh                      # on the lent machine (carry .whl and .benchdata/emo)
#   bash bench/gpu_campaign.sh --device cpu --tiny  # the dry run: same steps, tiny models, about 2 minutes
#   (--no-compile leaves out the torch.compile run: 100 s of CPU inductor compiling in the dry run)
#
# It runs, each with its own time limit (a run past it is recorded as NAME.failed and the rest go on):
#   1. today's path, our layout (full size, random weights, fp16, 512²): 1/2/4 steps × 1/4/8 sessions, with
#      FLOPs per frame and MFU, and the top-20 kernels of one run (torch.profiler);
#   2. the same with torch.compile (EmoAnimator(compile=True)) at 2 steps: against run 1, same campaign;
#   3. the EchoMimic-acc layout at its 6 steps and at 2, 1/4/8 sessions, with its top-20 kernels;
#   4. whisper's 30 s padding per live clip on the device (bench/audio_parity.py --device);
# and writes OUT (default /tmp/campaign; $OUT on the lent machine): emo_*.json, audio_parity_*.json,
# profile_*.md and campaign.md, the table of all of it. Copy the JSON into docs/bench/ and the table into
# docs/benchmarks.md with the card, the command and the commit.
#
# What travels (≤ 64 MiB; the machine has torch, transformers, numpy, opencv but not diffusers or mediapipe):
#   .whl/: diffusers (and any package KINDS.md does not list) as wheels for its Python 3.12;
#   .benchdata/emo/avatars.pkl: 8 prepared 512² portraits with their mattes, made here with
#     .venv/bin/python bench/emo.py --save-avatars .benchdata/emo/avatars.pkl --size 512
set -u
DEVICE=cuda
TINY=0
COMPILE=1
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --tiny) TINY=1; shift ;;
    --no-compile) COMPILE=0; shift ;;
    *) echo "usage: bash bench/gpu_campaign.sh [--device cuda|cpu] [--tiny] [--no-compile]" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-/tmp/campaign}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "pip install of .whl failed" >&2; exit 3; }
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
T0=$(date +%s)

step() {  # step NAME SECONDS COMMAND...: stdout to OUT/NAME.json; past its limit or failed: OUT/NAME.failed
  local name=$1 limit=$2
  shift 2
  local t=$(date +%s)
  if timeout "$limit" "$@" >"$OUT/$name.json" 2>"$OUT/$name.log"; then
    echo "$name: $(( $(date +%s) - t )) s" >&2
  else
    echo "$name: failed or past ${limit} s (log in $name.log)" >&2
    mv "$OUT/$name.json" "$OUT/$name.failed"
  fi
}

if [ "$TINY" = 1 ]; then
  # The dry run: the same steps on the tiny checkpoint (our layout only: there is no tiny EchoMimic layout).
  GRID=(--steps 1,2 --batches 1,2 --seconds 1 --device "$DEVICE" --grid-only)
  step emo_tiny 240 $PY bench/emo.py "${GRID[@]}" --profile "$OUT/profile_emo_tiny.md"
  [ "$COMPILE" = 1 ] && step emo_tiny_compiled 300 $PY bench/emo.py --steps 2 --batches 1 --seconds 1 \
    --device "$DEVICE" --grid-only --compile
  step audio_parity_tiny 120 $PY bench/audio_parity.py --tiny --seconds 3 --pairs 2 --device "$DEVICE"
else
  AV=(--avatars .benchdata/emo/avatars.pkl)
  [ -f .benchdata/emo/avatars.pkl ] || AV=()
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv >"$OUT/gpu.txt"
  step emo_full 170 $PY bench/emo.py --full --device "$DEVICE" --steps 1,2,4 --batches 1,4,8 --seconds 4 \
    --grid-only "${AV[@]}" --profile "$OUT/profile_emo_full.md"
  [ "$COMPILE" = 1 ] && step emo_full_compiled 150 $PY bench/emo.py --full --device "$DEVICE" --steps 2 \
    --batches 1,4,8 --seconds 4 --grid-only --compile "${AV[@]}"
  step emo_full_echomimic_acc 150 $PY bench/emo.py --full --source echomimic-acc --device "$DEVICE" --steps 6,2 \
    --batches 1,4,8 --seconds 4 --grid-only "${AV[@]}" --profile "$OUT/profile_emo_full_echomimic_acc.md"
  step audio_parity_echomimic 45 $PY bench/audio_parity.py --device "$DEVICE" --pairs 8
fi
$PY bench/campaign_table.py "$OUT" >"$OUT/campaign.md"
echo "campaign: $(( $(date +%s) - T0 )) s, results in $OUT" >&2
