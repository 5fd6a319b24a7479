# syntax=docker/dockerfile:1
# bookrec images. Targets:
#   docker build --target api -t bookrec:api .       gunicorn via `bookrec serve` on :8000
#   docker build --target worker -t bookrec:worker .  a Prefect ECS worker; flow runs use it too
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: dependencies and the project into one virtualenv ------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt
COPY pyproject.toml README.md prefect.yaml ./
COPY bookrec ./bookrec
COPY tasks ./tasks
COPY flows ./flows
COPY serving ./serving
COPY cli ./cli
# Editable install at the same path as in the runtime image: the code lives once, in /app,
# where Prefect's file entrypoints (flows/nightly.py:nightly_flow) also find it.
RUN pip install --no-cache-dir --no-deps -e . \
    && python -m compileall -q /app

# ---- runtime: slim, non-root -----------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BOOKREC_HOME=/home/bookrec/.bookrec \
    DO_NOT_TRACK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    PREFECT_HOME=/home/bookrec/.prefect
RUN groupadd --system --gid 10001 bookrec \
    && useradd --system --uid 10001 --gid bookrec --create-home --home-dir /home/bookrec bookrec
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /app
USER 10001:10001

# ---- worker: polls the ECS work pool and launches flow runs as Fargate tasks -----------------
FROM runtime AS worker
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/health', timeout=3)"]
# The worker's health endpoint listens on loopback only, for this HEALTHCHECK.
ENV PREFECT_WORKER_WEBSERVER_HOST=127.0.0.1 \
    PREFECT_WORKER_WEBSERVER_PORT=8080
CMD ["prefect", "worker", "start", "--pool", "bookrec-ecs", "--type", "ecs", "--with-healthcheck"]

# ---- api (the default target): the Flask API and page under gunicorn ------------------------
FROM runtime AS api
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/livez', timeout=2)"]
ENV BOOKREC_ENVIRONMENT=production
CMD ["bookrec", "serve", "--host", "0.0.0.0", "--port", "8000"]
