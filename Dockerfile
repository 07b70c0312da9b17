# Newsroom Digest: one image for every role (web, worker, beat, migrations).
# The role is chosen by the command; see docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DIGEST_DATA_DIR=/data

# An unprivileged user, and /data owned by it: a named volume mounted there is initialised
# from this directory, so it inherits the ownership and the app can write its state.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/digest digest \
 && mkdir -p /data \
 && chown digest:digest /data

WORKDIR /app

# Only what the wheel is built from (see [tool.hatch.build.targets.wheel] in pyproject.toml).
# Copying "." would also ship .git, a local .venv and var/, which holds a development
# database and secret.key.
COPY pyproject.toml README.md ./
COPY digest ./digest
COPY tasks ./tasks
COPY templates ./templates
RUN pip install --no-cache-dir .

USER digest
VOLUME ["/data"]
EXPOSE 8000

# No ENTRYPOINT: a compose `command:` is then the whole command line ("digest worker", ...).
CMD ["digest", "web", "--host", "0.0.0.0", "--port", "8000"]
