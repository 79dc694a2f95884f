# syntax=docker/dockerfile:1
#
# One image for every process type of the Procfile. The default command is `web`;
# pass another command for the others (see docs/operations.md, "Docker"):
#   release       flask db upgrade
#   worker_short  celery -A worker worker -Q short --hostname short@%h --loglevel=INFO --concurrency=2
#   worker_long   celery -A worker worker -Q long --hostname long@%h --loglevel=INFO --concurrency=2
#   beat          celery -A worker beat --loglevel=INFO --schedule=instance/celerybeat-schedule
# worker_short runs the tasks that take milliseconds (cache invalidation, the revocation
# mirror), worker_long the jobs and purges (app/queue.py routes each task); run both.

ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: the package and its runtime dependencies in a venv ----------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# the same path as in the final stage: a venv's scripts hard-code it
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --upgrade pip

WORKDIR /src
# Dependencies first, from the lock alone (exact versions, checked against their hashes;
# pip refuses a package the lock does not pin), so every build gets the same packages
# and this layer is reused while only code changes. All of them ship wheels: no compiler.
COPY requirements.txt ./
RUN pip install --require-hashes -r requirements.txt
# then the package itself (setup.cfg reads README.md as the long description), whose
# dependencies the lock has already installed
COPY setup.cfg pyproject.toml README.md ./
COPY app ./app
COPY worker ./worker
RUN pip install --no-deps . \
    && pip check

# --- final image ------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

# PYTHONPATH=/app: the code under /app is what runs (also for `celery -A worker`, which
# does not add the working directory to sys.path), so app/ finds migrations/ beside it.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FLASK_APP=wsgi:app \
    APP_ENV=production \
    HOST=0.0.0.0 \
    PORT=5000

RUN groupadd --system --gid 10001 postboard \
    && useradd --system --uid 10001 --gid postboard --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin postboard

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
# code and config stay owned by root: the app user can read them, not change them
COPY wsgi.py gunicorn.conf.py Procfile ./
COPY migrations ./migrations
COPY app ./app
COPY worker ./worker
# bytecode compiled at build time (the app user cannot write under /app), and Flask's
# instance folder, the one place it may write (`flask seed --demo` keeps its logins there)
RUN python -m compileall -q /app \
    && mkdir instance && chown postboard:postboard instance

USER 10001:10001

EXPOSE 5000

# liveness only (/healthz touches no backing service); slim has no curl, python does it
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '5000'), timeout=4)"]

# the Procfile's web line; gunicorn handles SIGTERM (docker stop) with a graceful shutdown
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
