# The hubfly-builder service image: one image for web, worker and beat (docker-compose.yml).
FROM moby/buildkit:v0.32.2 AS buildkit

FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends git ca-certificates openssh-client \
    && rm -rf /var/lib/apt/lists/*
COPY --from=buildkit /usr/bin/buildctl /usr/local/bin/buildctl
WORKDIR /app
COPY requirements.txt .
RUN --mount=type=cache,target=/root/.cache/pip pip install -r requirements.txt
COPY . .
# uid and gid 10001: buildkitd (docker-compose.yml) hands its socket to group 10001.
RUN groupadd --system --gid 10001 hubfly && useradd --system --uid 10001 --gid 10001 --home /data hubfly \
    && mkdir -p /data /log /registry-auth && chown hubfly:hubfly /data /log /registry-auth
USER hubfly
ENV DATA_DIR=/data LOG_DIR=/log PYTHONUNBUFFERED=1
EXPOSE 8080
CMD ["gunicorn", "hubfly.asgi:application", "--config", "python:hubfly.gunicorn_conf", "--worker-class", "uvicorn_worker.UvicornWorker", "--workers", "2", "--bind", "0.0.0.0:8080"]
