# Fugato container image: the server in a virtualenv, run as uid 1000, with a read-only root filesystem
# (only /tmp must be writable: supervisord's socket and pid file and the workers' shared metrics files).
#
#   docker build -t fugato:0.1.0 .
#   docker run --rm --read-only --tmpfs /tmp --stop-timeout 40 -p 8000:8000 \
#     -e FUGATO_HTTP_API_KEY=change-me -e FUGATO_CLIENT_TOKEN_HMAC_SECRET_KEY=change-me-to-a-long-random-secret \
#     fugato:0.1.0
#
# The entrypoint runs one worker per CPU of the container's CPU limit (--workers auto; one with the memory
# engine). Configure it with /etc/fugato/config.json (mount your own) and FUGATO_* environment variables.
# --stop-timeout (compose: stop_grace_period) must exceed shutdown.timeout (30s) plus supervisord's 5 s:
# Docker's default of 10 s kills a node that is still draining its connections.
# tests/container builds and runs this file with podman on a Debian base (PYTHON_IMAGE) made by debootstrap.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/fugato/venv
WORKDIR /src
# Dependencies first (a layer that survives source and README changes), then the package itself.
COPY pyproject.toml ./
RUN /opt/fugato/venv/bin/python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > /tmp/requirements.txt \
 && /opt/fugato/venv/bin/pip install --only-binary=:all: -r /tmp/requirements.txt
COPY README.md ./
COPY node ./node
RUN /opt/fugato/venv/bin/pip install --no-deps . \
 && /opt/fugato/venv/bin/python -m compileall -q /opt/fugato/venv

FROM ${PYTHON_IMAGE}
# tini reaps orphaned processes and forwards signals to `fugato serve`, which forwards them to supervisord.
# /etc/fugato/config.json starts empty (built-in defaults plus FUGATO_* variables); the chart mounts its
# ConfigMap over that directory.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 1000 fugato \
 && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin fugato \
 && mkdir -p /etc/fugato \
 && echo '{}' > /etc/fugato/config.json
COPY --from=build /opt/fugato/venv /opt/fugato/venv
COPY supervisor/supervisord.conf /opt/fugato/supervisor/
ENV PATH=/opt/fugato/venv/bin:$PATH \
    FUGATO_SUPERVISOR_DIR=/opt/fugato/supervisor \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp
USER 1000:1000
WORKDIR /tmp
# 8000: clients (/connection/websocket). 9000: the server API, /health and /metrics when
# http_server.internal_port is 9000 (the chart sets it); without it everything is served on 8000.
EXPOSE 8000 9000
# GET /health on the port the config says (the internal one when set); no curl in the image.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-m", "node.healthcheck", "--config", "/etc/fugato/config.json"]
ENTRYPOINT ["/usr/bin/tini", "--", "fugato", "serve", "--workers", "auto", "--config", "/etc/fugato/config.json"]
