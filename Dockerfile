# emo-stream: the lite backend on CPU (the default). Build: docker build -t emo-stream .
# Run:   docker run -p 8080:8080 -e EMO_STREAM_TOKEN=change-me emo-stream
# Binding 0.0.0.0 inside the container needs a token (the server refuses to start without one).
FROM python:3.11-slim-bookworm

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
# CPU torch from PyTorch's CPU index: the default index's wheel is a multi-GB CUDA build.
RUN pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
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
