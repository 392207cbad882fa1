# syntax=docker/dockerfile:1
# The micromoments worker image: `docker build -t micromoments .`, then `docker run micromoments worker`
# (the default) or any other command (`feed`, `settings`, `replay`). Settings come from MM_* variables.

# --- build: a virtual environment with the package and its dependencies ---------------------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# A compiler, for any dependency without a wheel for this platform; it stays in this stage.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
RUN /opt/venv/bin/pip install . \
    && find /opt/venv -depth -name __pycache__ -type d -exec rm -rf {} +

# --- run: the interpreter, the virtual environment, an unprivileged user --------------------------
FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin micromoments
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MM_METRICS_HOST=0.0.0.0 \
    MM_METRICS_PORT=6066
USER 10001:10001
WORKDIR /tmp
EXPOSE 6066
# /livez of the worker (`feed` and the other commands serve nothing: disable it for them).
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/livez' % os.environ['MM_METRICS_PORT'], timeout=2)"]
ENTRYPOINT ["micromoments"]
CMD ["worker"]
