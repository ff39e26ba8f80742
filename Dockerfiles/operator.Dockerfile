# syntax=docker/dockerfile:1
# The operator image: slim Python, the project's `operator` extra and nothing
# else (no torch), run as a non-root user on a read-only root filesystem.
#
#   docker build -f Dockerfiles/operator.Dockerfile -t tts-operator/operator:0.1.0 .
#
# Everything installed is pinned: the base image by tag, the build backend by
# Dockerfiles/locks/build.txt, and every package by Dockerfiles/locks/operator.txt
# (the whole dependency closure, installed with --no-deps, so nothing else can
# come in). Regenerate the locks with `python -m tests.chart.generate`.

FROM python:3.11.13-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# The project's own wheel, built from this repository's pyproject.toml.
COPY Dockerfiles/locks/build.txt /locks/build.txt
RUN python -m pip install --no-deps -r /locks/build.txt
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY inference ./inference
RUN python -m pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .
# The runtime environment: the locked closure of tts-operator[operator].
COPY Dockerfiles/locks/operator.txt /locks/operator.txt
# The venv gets no pip of its own: the build stage's pip installs into it, so
# the image holds exactly the lock and the project.
RUN python -m venv --without-pip /opt/venv \
    && python -m pip --python /opt/venv/bin/python install --no-deps -r /locks/operator.txt \
    && python -m pip --python /opt/venv/bin/python install --no-deps /wheels/tts_operator-*.whl \
    && python -m pip --python /opt/venv/bin/python check \
    && /opt/venv/bin/python -c "import tts_operator.main, sys; assert 'torch' not in sys.modules"

FROM python:3.11.13-slim-bookworm
LABEL org.opencontainers.image.title="tts-operator" \
      org.opencontainers.image.description="The tts-operator: TTSEndpoint and TTSJob reconciler (Kopf)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/venv /opt/venv
# Bytecode was compiled at install time; nothing writes to the image at run
# time, so the root filesystem can be read-only (the chart mounts /tmp).
ENV PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
# A numeric user, so runAsNonRoot can verify it without a passwd entry.
USER 10001:10001
# /metrics and Kopf's /healthz (TTS_OPERATOR_METRICS_PORT, TTS_OPERATOR_HEALTH_PORT).
EXPOSE 8080 8081
ENTRYPOINT ["tts-operator"]
