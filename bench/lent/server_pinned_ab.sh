#!/usr/bin/env bash
# Same call, same machine: the live server pinned to cpus 0,1 with server.processes 1 (the baseline: every session
# in one process, one GIL) and 2 (session processes, the default on 2 cores). Files: $OUT/t1.json (baseline
# JSON only) and, for processes 2, what gpu_server.sh keeps (bench_server.json, log, state.json, probe-N.npz).
# Preparing what travels (on a machine with the project's venv, mediapipe and espeak-ng):
#   .venv/bin/python bench/face_replay.py record .benchdata/server/face_replay.npz
#   EMO_STREAM_TEST_CACHE=.benchdata/server/test-media .venv/bin/python bench/server.py --sessions 1 --seconds 2
#     (makes the microphone utterances; or copy them from .cache/test-media)
#   wheels for the lent machine's Python (3.12) in .whl: av, aiortc, aioice, pyee, pylibsrtp, cryptography,
#     pyopenssl, cffi, pycparser, google-crc32c, dnspython, ifaddr, fastapi, starlette, pydantic, pydantic-core,
#     annotated-types, typing-inspection, typing-extensions, annotated-doc, opentelemetry-api, uvicorn,
#     python-multipart, silero-vad (`pip download --no-deps --only-binary=:all: --python-version 3.12 ...`)
set -u
K=.benchdata/server
for t in 1 2; do
  # the first "processes:" of default.yaml is server.processes (0 = one per core)
  sed "0,/^  processes: 0$/s//  processes: $t/" configs/default.yaml > /tmp/processes$t.yaml
  grep -q "^  processes: $t$" /tmp/processes$t.yaml || { echo "config edit failed"; exit 4; }
done
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
mkdir -p /tmp/nouvloop/uvloop
echo 'raise ImportError("uvloop hidden: the server ships without it")' >/tmp/nouvloop/uvloop/__init__.py
export PYTHONPATH=/tmp/nouvloop:/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 EMO_STREAM_TEST_CACHE=$PWD/$K/test-media
CLIENTS=2-$(( $(nproc) - 1 ))
SESS=${SESS:-1,2,4,6}
mkdir -p /tmp/t1
timeout -k 15 200 python3 bench/server.py --config /tmp/processes1.yaml --server-cpus 0,1 --client-cpus "$CLIENTS" \
  --sessions $SESS --seconds 10 --face-replay $K/face_replay.npz --save-dir /tmp/t1 > "$OUT/t1.json" 2>/tmp/t1.log
echo "processes=1 rc=$?"; tail -n 6 /tmp/t1.log
timeout -k 15 200 python3 bench/server.py --config /tmp/processes2.yaml --server-cpus 0,1 --client-cpus "$CLIENTS" \
  --sessions $SESS --seconds 10 --face-replay $K/face_replay.npz --save-dir "$OUT" > "$OUT/bench_server.json" 2>"$OUT/bench_server.log"
echo "processes=2 rc=$?"; tail -n 6 "$OUT/bench_server.log"
python3 - "$OUT" <<'PY'
import json, os, sys
for name in ("t1.json", "bench_server.json"):
    try:
        c = json.load(open(os.path.join(sys.argv[1], name)))["candidate"]
    except Exception as exc:
        print(name, "no JSON:", exc); continue
    print(name, "sessions_at_25fps", c["sessions_at_25fps"], "on_time", c["sessions_at_25fps_on_time"])
    for n, e in c["per_sessions"].items():
        if "error" in e:
            print(f"  N={n}: error {e['error'][-200:]}"); continue
        st = e["stage_latency"]
        print(f"  N={n}: ok {e['sessions_ok']}/{n} fps_min {e['fps_min']} late {e['frames_late']}/{e['frames_sent']} "
              f"server {e['server_cpu_cores']} cores, its cpus busy {e['server_cpus_busy_cores']}, "
              f"e2e {st.get('end_to_end', {}).get('mean_ms')} animate {st.get('animate', {}).get('mean_ms')} "
              f"encode {st.get('encode', {}).get('mean_ms')} ms, refused {[f.get('error', '')[-80:] for f in e['failed']]}")
PY
