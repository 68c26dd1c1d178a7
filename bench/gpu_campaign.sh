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
# and writes OUT (default /tmp/campaign; $OUT on the lent machine): campaign.md, the table of all of it, and
# raw.tgz with emo_*.json, audio_parity_*.json, profile_*.md and each step's log. Copy the JSON into
# docs/bench/ and the table into docs/benchmarks.md with the card, the command and the commit.
#
# What travels (≤ 64 MiB; the machine has torch, transformers, numpy, opencv but not diffusers or mediapipe):
#   .whl/: diffusers (and any package KINDS.md does not list) as wheels for its Python 3.12;
#   .benchdata/emo/avatars.pkl: 8 prepared 512² portraits with their mattes, made here with
#     .venv/bin/python bench/emo.py --save-avatars .benchdata/emo/avatars.pkl --size 512
#   .benchdata/emo/media/: the espeak-ng WAVs bench/audio_parity.py speaks (from .cache/test-media after a run
#     here: speech-en-us-*.wav), as the lent machine has no espeak-ng;
#   .benchdata/emo/commit: `git rev-parse --short HEAD`, for the results' commit when .git does not travel.
# The device call: carry [".whl", ".benchdata"], timeout_s 590.
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
# Results are made in STAGE and packed into OUT/raw.tgz after every step (the device tool brings back a few
# files only, and what is under OUT when a call is stopped): OUT holds raw.tgz and campaign.md.
STAGE=${STAGE:-/tmp/campaign-stage}
mkdir -p "$OUT" "$STAGE"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "pip install of .whl failed" >&2; exit 3; }
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
# The test speech travels as WAVs (no espeak-ng there); the commit travels as a file when .git does not.
[ -d .benchdata/emo/media ] && export EMO_STREAM_TEST_CACHE=$PWD/.benchdata/emo/media
EMO_BENCH_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || cat .benchdata/emo/commit 2>/dev/null || echo unknown)
export EMO_BENCH_COMMIT
echo "$EMO_BENCH_COMMIT" >"$STAGE/commit.txt"
T0=$(date +%s)

pack() {
  $PY bench/campaign_table.py "$STAGE" >"$STAGE/campaign.md" 2>>"$STAGE/table.log"
  cp "$STAGE/campaign.md" "$OUT/campaign.md"
  tar czf "$OUT/raw.tgz" -C "$STAGE" .
}

step() {  # step NAME SECONDS COMMAND...: its JSON in STAGE/NAME.json; failed or past its limit: NAME.failed
  local name=$1 limit=$2
  shift 2
  local t=$(date +%s)
  if timeout "$limit" "$@" >"$STAGE/$name.json" 2>"$STAGE/$name.log"; then
    echo "$name: $(( $(date +%s) - t )) s" >&2
  else
    echo "$name: failed or past ${limit} s (log in $name.log)" >&2
    # A bench stopped at its limit may have written its rows so far (--out): keep them as NAME.partial.json.
    [ -s "$STAGE/$name.rows" ] && mv "$STAGE/$name.rows" "$STAGE/$name.partial.json"
    mv "$STAGE/$name.json" "$STAGE/$name.failed"
  fi
  rm -f "$STAGE/$name.rows"
  pack
}

if [ "$TINY" = 1 ]; then
  # The dry run: the same steps on the tiny checkpoint (our layout only: there is no tiny EchoMimic layout).
  step audio_parity_tiny 120 $PY bench/audio_parity.py --tiny --seconds 3 --pairs 2 --device "$DEVICE"
  step emo_tiny 240 $PY bench/emo.py --steps 1,2 --batches 1,2 --seconds 1 --device "$DEVICE" --grid-only \
    --out "$STAGE/emo_tiny.rows" --profile "$STAGE/profile_emo_tiny.md"
  [ "$COMPILE" = 1 ] && step emo_tiny_compiled 300 $PY bench/emo.py --steps 2 --batches 1 --seconds 1 \
    --device "$DEVICE" --grid-only --compile --out "$STAGE/emo_tiny_compiled.rows"
else
  AV=(--avatars .benchdata/emo/avatars.pkl)
  [ -f .benchdata/emo/avatars.pkl ] || AV=()
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv \
    >"$STAGE/gpu.txt"
  step audio_parity_echomimic 40 $PY bench/audio_parity.py --device "$DEVICE" --pairs 8
  step emo_full 190 $PY bench/emo.py --full --device "$DEVICE" --steps 1,2,4 --batches 1,4,8 --seconds 3 \
    --grid-only "${AV[@]}" --out "$STAGE/emo_full.rows" --profile "$STAGE/profile_emo_full.md"
  step emo_full_echomimic_acc 170 $PY bench/emo.py --full --source echomimic-acc --device "$DEVICE" --steps 6,2 \
    --batches 1,4,8 --seconds 3 --grid-only "${AV[@]}" --out "$STAGE/emo_full_echomimic_acc.rows" \
    --profile "$STAGE/profile_emo_full_echomimic_acc.md"
  # Last: its compile time on this machine is unknown.
  [ "$COMPILE" = 1 ] && step emo_full_compiled 150 $PY bench/emo.py --full --device "$DEVICE" --steps 2 \
    --batches 1,4,8 --seconds 3 --grid-only --compile "${AV[@]}" --out "$STAGE/emo_full_compiled.rows"
fi
pack
echo "campaign: $(( $(date +%s) - T0 )) s, results in $OUT (campaign.md, raw.tgz)" >&2
