# syntax=docker/dockerfile:1
# The responder: Plivo SMS webhook service (Flask under gunicorn).
#
#   docker build -t responder .
#   docker run --rm -p 8000:8000 -e PLIVO_AUTH_TOKEN=... responder
#
# Pinned to an exact patch release; bump the tag deliberately (and rebuild).
FROM python:3.11.14-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PORT=8000

# Unprivileged account the service runs as (fixed ids so volumes and
# Kubernetes runAsNonRoot/runAsUser can rely on them). It gets a writable home
# of its own (/app is root's), for tools that want one: gunicorn's default
# control socket path, when that socket is switched on, is ~/.gunicorn/.
RUN groupadd --system --gid 10001 app \
    && useradd --system --no-log-init --uid 10001 --gid app \
       --create-home --home-dir /home/app --shell /usr/sbin/nologin app

WORKDIR /app

# Dependencies first, in their own layer: code changes don't reinstall them.
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

# The code stays owned by root (read-only for the service); only the instance
# folder, where the SQLite database lives, belongs to the service user, and to
# group 0 with the same rights (chgrp 0, g=u: OpenShift runs the image as an
# arbitrary user id in group 0, which must be able to write the database too).
COPY app/ ./app/
COPY migrations/ ./migrations/
COPY config.py metrics_folder.py wsgi.py gunicorn.conf.py rules.yaml rules.test.yaml pyproject.toml ./
RUN mkdir -p /app/instance \
    && chown app:0 /app/instance \
    && chmod 0770 /app/instance

USER 10001:10001

EXPOSE 8000

# Slim images have no curl: probe /healthz with the standard library, on
# ${PORT:-8000} (read from the environment, so a PORT given at `docker run`
# is followed). Any error or non-2xx answer raises, and python exits 1.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % (os.environ.get('PORT') or '8000'), timeout=4)"]

CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
