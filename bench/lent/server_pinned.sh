#!/usr/bin/env bash
# Live-server capacity on a lent 16-core machine: `emo-stream serve` pinned to cpus 0,1 (2 torch/OpenMP
# threads), the aiortc clients and the bench on cpus 2..nproc-1. Runs from the repo root:
#     bash bench/lent/server_pinned.sh   (carry .whl .benchdata/server; ~2-3 min,
#     the bench itself is cut at 300 s)
# Writes to $OUT: bench_server.json (the bench's JSON), bench_server.log (its stderr), state.json and
# probe-N.npz (the probe client's streams). Complete here afterwards (face mesh, lip-sync, offline render):
#     EMO_STREAM_TEST_CACHE=.benchdata/server/test-media .venv/bin/python bench/server.py --finish <files_at>
# No mediapipe there (numpy 2, and no room beside PyAV): the server's default portrait comes from
# face_replay.npz (bench/face_replay.py record), the probe's face mesh runs here with --finish.
# Preparing what travels (on a machine with the project's venv, mediapipe and espeak-ng):
#   .venv/bin/python bench/face_replay.py record .benchdata/server/face_replay.npz
#   EMO_STREAM_TEST_CACHE=.benchdata/server/test-media .venv/bin/python bench/server.py --sessions 1 --seconds 2
#     (makes the microphone utterances; or copy them from .cache/test-media)
#   wheels for the lent machine's Python (3.12) in .whl: av, aiortc, aioice, pyee, pylibsrtp, cryptography,
#     pyopenssl, cffi, pycparser, google-crc32c, dnspython, ifaddr, fastapi, starlette, pydantic, pydantic-core,
#     annotated-types, typing-inspection, typing-extensions, annotated-doc, opentelemetry-api, uvicorn,
#     python-multipart, silero-vad (`pip download --no-deps --only-binary=:all: --python-version 3.12 ...`)
set -u
OUT=${OUT:-/tmp/bench-out}
mkdir -p "$OUT"
K=.benchdata/server
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "pip install of .whl failed"; exit 3; }
# uvloop is installed there but not in the server's own dependencies: hide it so uvicorn runs asyncio, as deployed
mkdir -p /tmp/nouvloop/uvloop
echo 'raise ImportError("uvloop hidden by gpu_server.sh: the server ships without it")' >/tmp/nouvloop/uvloop/__init__.py
export PYTHONPATH=/tmp/nouvloop:/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 EMO_STREAM_TEST_CACHE=$PWD/$K/test-media
N=$(nproc)
CLIENTS=2-$((N - 1))
echo "nproc $N, kernel $(uname -r), installed in $(( $(date +%s) - T0 )) s, clients on cpus $CLIENTS"
python3 - <<'EOF'
import importlib, os, sys, time, multiprocessing as mp
v = {}
for m in ("numpy", "cv2", "av", "aiortc", "fastapi", "pydantic", "uvicorn", "starlette", "PIL", "httpx", "anyio",
          "torch", "silero_vad", "mediapipe", "uvloop"):
    try:
        v[m] = getattr(importlib.import_module(m), "__version__", "?")
    except Exception as exc:
        v[m] = f"absent ({type(exc).__name__})"
print("python", sys.version.split()[0], v)
try:
    import torch
    from silero_vad import load_silero_vad
    print("torch threads (default)", torch.get_num_threads(), "| silero-vad jit:",
          round(float(load_silero_vad(onnx=False)(torch.zeros(512), 16000)), 4))
except Exception as exc:
    print("torch/silero-vad check failed:", type(exc).__name__, exc)

def spin(q):
    os.sched_setaffinity(0, {0})
    t = time.monotonic()
    while time.monotonic() - t < 1.0:
        pass
    q.put(time.process_time())

q = mp.Queue()
ps = [mp.Process(target=spin, args=(q,)) for _ in range(2)]
t = time.monotonic()
[p.start() for p in ps]
[p.join() for p in ps]
cpu = q.get() + q.get()
print(f"pinning check: 2 spinners on cpu 0 for 1 s used {cpu:.2f} cpu-s (~1.0 = affinity enforced, ~2.0 = not)")
EOF
timeout -k 15 300 python3 bench/server.py --config configs/default.yaml --server-cpus 0,1 --client-cpus "$CLIENTS" \
    --sessions 1,2,4,6 --seconds 10 --face-replay $K/face_replay.npz --save-dir "$OUT" \
    >"$OUT/bench_server.json" 2>"$OUT/bench_server.log"
rc=$?
echo "bench rc=$rc after $(( $(date +%s) - T0 )) s; stderr tail:"
tail -n 30 "$OUT/bench_server.log"
python3 - "$OUT" <<'EOF'
import json, os, sys
out = sys.argv[1]
try:
    d = json.load(open(os.path.join(out, "bench_server.json")))
except Exception as exc:
    print("no bench JSON:", exc)
    sys.exit(0)
c = d["candidate"]
print("device:", d["device"], "| commit", d["commit"])
print("sessions_at_25fps", c["sessions_at_25fps"], "| on_time", c["sessions_at_25fps_on_time"])
for n, e in c["per_sessions"].items():
    if "error" in e:
        print(f"N={n}: error {e['error'][-300:]}")
        continue
    st = e["stage_latency"]
    print(f"N={n}: ok {e['sessions_ok']}/{n} fps_min {e['fps_min']} late {e['frames_late']}/{e['frames_sent']} "
          f"server {e['server_cpu_cores']} cores ({e['server_cpu_s_per_session_per_s']}/session, "
          f"{e['server_cpu_fraction_of_pinned']} of pinned; its cpus busy {e['server_cpus_busy_cores']}) "
          f"clients' cpus busy {e['client_cpus_busy_cores']} lag p99<={e['loop_lag_ms']['p99_at_most']} ms "
          f"e2e {st.get('end_to_end', {}).get('mean_ms')} ms animate {st.get('animate', {}).get('mean_ms')} ms "
          f"encode {st.get('encode', {}).get('mean_ms')} ms failed {[f.get('error', '')[-120:] for f in e['failed']]}")
for f in sorted(os.listdir(out)):
    print(f, os.path.getsize(os.path.join(out, f)))
EOF
exit $rc
