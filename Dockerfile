# emo-stream. CPU image (lite backend, the default):
#   docker build -t emo-stream .
#   docker run --network host -e EMO_STREAM_TOKEN=change-me -v emo-data:/data emo-stream
# GPU image (the emo backend; needs the NVIDIA container toolkit and a checkpoint folder):
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t emo-stream:gpu .
#   docker run --gpus all --network host -e EMO_STREAM_TOKEN=... -v /models:/models emo-stream:gpu \
#       emo-stream serve --config configs/emo-gpu.yaml --host 0.0.0.0 --data-dir /data
# Binding 0.0.0.0 inside the container needs a token (the server refuses to start without one).
FROM python:3.11-slim-bookworm

# Which torch build: the CPU index by default (the default PyPI wheel is a multi-GB CUDA build).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    GLOG_minloglevel=2

# Shared libraries OpenCV, mediapipe and PyAV's wheels expect on a slim image.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
RUN pip install "torch==2.13.0" --index-url "${TORCH_INDEX}"
COPY pyproject.toml README.md ./
COPY emo_stream ./emo_stream
COPY server ./server
COPY client_web ./client_web
COPY configs ./configs
RUN pip install . && pip install --no-deps "mediapipe==0.10.21"

RUN useradd --create-home --uid 1000 emo && mkdir -p /data && chown emo /data
USER emo
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz').status != 200)"
# WebRTC media flows over UDP on ephemeral ports: run with --network host, or give the
# server a TURN server in the config (server.ice_servers) when it sits behind NAT.
CMD ["emo-stream", "serve", "--config", "configs/default.yaml", "--host", "0.0.0.0", "--port", "8080", \
     "--data-dir", "/data"]
