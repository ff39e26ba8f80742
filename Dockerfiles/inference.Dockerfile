# syntax=docker/dockerfile:1
# The inference image: the server, the sync and the flash_attn installer
# (`tts-inference`) on CUDA 13.0, torch 2.11.0, torchaudio 2.11.0 and f5-tts
# 1.1.22, run as a non-root user; it works with a read-only root filesystem
# given a writable /tmp (an emptyDir), where every cache below points.
#
#   docker build -f Dockerfiles/inference.Dockerfile -t tts-operator/inference:0.1.0 .
#   # flash_attn baked in, instead of installed into the cache at pod start:
#   docker build -f Dockerfiles/inference.Dockerfile \
#     --build-arg FLASH_ATTN_WHEEL=https://.../flash_attn-2.8.3+cu13torch2.11cxx11abiTRUE-cp311-cp311-linux_x86_64.whl \
#     --build-arg FLASH_ATTN_SHA256=<sha256 of the wheel> -t tts-operator/inference:0.1.0-fa .
#
# torch 2.11.0 from PyPI is built for CUDA 13.0 (its nvidia-* wheels are
# 13.0.x), so the base is CUDA 13.0's runtime; the host's driver must support
# CUDA 13.0. Python is CPython 3.11, the version the locks were resolved and
# the project tested with, installed by uv (Ubuntu 24.04 ships 3.12 only).
#
# Everything installed is pinned: images by tag, ffmpeg by Ubuntu version,
# Python by version, uv by its wheels' hashes (Dockerfiles/locks/uv.txt), the
# build backend by Dockerfiles/locks/build.txt, and every package by
# Dockerfiles/locks/inference.txt: the closure of tts-operator[inference] less
# the training and UI packages f5-tts declares but serving never imports
# (Dockerfiles/locks/inference-excluded.txt), installed with --no-deps so
# nothing else can come in. Regenerate the locks with
# `python -m tests.chart.generate` (all but uv.txt, which says how it is made).

# uv from its wheel, pinned by hash (Dockerfiles/locks/uv.txt); only its binary
# goes on.
FROM python:3.11.13-slim-bookworm AS uv
COPY Dockerfiles/locks/uv.txt /locks/uv.txt
RUN python -m pip install --no-cache-dir --disable-pip-version-check --no-deps \
        --require-hashes -r /locks/uv.txt \
    && uv --version

FROM nvidia/cuda:13.0.1-runtime-ubuntu24.04 AS build
COPY --from=uv /usr/local/bin/uv /usr/local/bin/uv
ENV UV_NO_CACHE=1 \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy
RUN uv python install 3.11.13 \
    && uv venv --python 3.11.13 /opt/venv
WORKDIR /src
COPY Dockerfiles/locks /locks
# The project's own wheel, built from this repository's pyproject.toml.
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY inference ./inference
RUN uv build --wheel --python 3.11.13 --build-constraint /locks/build.txt --out-dir /wheels .
RUN uv pip install --python /opt/venv/bin/python --no-deps -r /locks/inference.txt \
    && uv pip install --python /opt/venv/bin/python --no-deps /wheels/tts_operator-*.whl
# flash_attn baked in (optional): a wheel built for this image's ABI (cp311,
# torch 2.11, CUDA 13, C++11 ABI), pinned by its sha256. The operator's
# install-flash-attn init container is then a no-op: flash_attn already imports.
ARG FLASH_ATTN_WHEEL=""
ARG FLASH_ATTN_SHA256=""
RUN if [ -n "$FLASH_ATTN_WHEEL" ]; then \
        [ -n "$FLASH_ATTN_SHA256" ] || { echo "FLASH_ATTN_SHA256 must come with FLASH_ATTN_WHEEL" >&2; exit 1; } \
        && echo "flash-attn @ $FLASH_ATTN_WHEEL --hash=sha256:$FLASH_ATTN_SHA256" > /tmp/flash-attn.txt \
        && uv pip install --python /opt/venv/bin/python --no-deps --require-hashes -r /tmp/flash-attn.txt \
        && /opt/venv/bin/python -c "import importlib.util as u; assert u.find_spec('flash_attn')"; \
    fi
# The init containers' commands import without torch; the server's imports resolve.
RUN /opt/venv/bin/python -c "import tts_inference.cli, tts_inference.cache.sync, tts_inference.flash_attn, sys; assert 'torch' not in sys.modules" \
    && /opt/venv/bin/python -c "import tts_inference.app, tts_inference.engine.f5"

FROM nvidia/cuda:13.0.1-runtime-ubuntu24.04
LABEL org.opencontainers.image.title="tts-operator inference" \
      org.opencontainers.image.description="F5-TTS server, cache sync and flash_attn installer (tts-inference). Holds no model weights; F5-TTS's published weights (F5TTS_v1_Base) are CC-BY-NC-4.0: non-commercial use only." \
      org.opencontainers.image.licenses="Apache-2.0"
# FFmpeg's shared libraries: torchcodec (audio loading) and the mp3/opus/aac encoders.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ffmpeg=7:6.1.1-3ubuntu5 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/python /opt/python
COPY --from=build /opt/venv /opt/venv
# The console scripts come first on PATH. Bytecode was compiled at install
# time; every cache a library may write goes to /tmp, so with a read-only root
# filesystem only /tmp needs to be writable.
ENV PATH=/opt/venv/bin:/usr/local/nvidia/bin:/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    XDG_CONFIG_HOME=/tmp/.config \
    MPLCONFIGDIR=/tmp/matplotlib \
    NUMBA_CACHE_DIR=/tmp/numba \
    TRITON_CACHE_DIR=/tmp/triton \
    TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor \
    HF_HOME=/tmp/huggingface
# The uid the operator's pods run as (runAsUser 1000, fsGroup 1000).
USER 1000:1000
WORKDIR /tmp
EXPOSE 8000
# The operator sets each container's command (`tts-inference sync|install-flash-attn|serve ...`).
ENTRYPOINT ["tts-inference"]
CMD ["--help"]
