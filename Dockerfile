# filegate: build the virtual environment in one stage, run it from a slim one as a non-root user.
# BASE is python:3.12-slim; CI builds a stand-in of it locally (docker/base.sh, README "Docker").
ARG BASE=python:3.12-slim
FROM ${BASE} AS build
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install --no-cache-dir "uv==0.13.9"
WORKDIR /src
COPY docker/requirements.txt ./requirements.txt
# The runtime dependencies at the exact versions CI tested (tests/test_dependencies.py), then the
# project itself without resolving anything again.
RUN uv venv /opt/venv \
    && VIRTUAL_ENV=/opt/venv uv pip install --no-cache -r requirements.txt
COPY pyproject.toml README.md ./
COPY app ./app
RUN VIRTUAL_ENV=/opt/venv uv pip install --no-cache --no-deps .

FROM ${BASE}
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /srv/filegate filegate
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FILEGATE_HOST=0.0.0.0 \
    FILEGATE_PORT=8000 \
    FILEGATE_WORKERS=2 \
    LOCAL_ROOT=/srv/filegate/data \
    LOG_FORMAT=json
USER 10001:10001
WORKDIR /srv/filegate
RUN mkdir -p /srv/filegate/data
VOLUME ["/srv/filegate/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('FILEGATE_PORT', '8000') + '/healthz', timeout=2)"]
# SIGTERM lets transfers in flight finish within SHUTDOWN_GRACE_SECONDS.
STOPSIGNAL SIGTERM
CMD ["filegate"]
