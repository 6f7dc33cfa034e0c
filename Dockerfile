# syntax=docker/dockerfile:1
# A chatsock worker in three stages. Only the last is the image: Python, chatsock
# and its runtime dependencies, run as an unprivileged user; no node, npm,
# compiler or test tool. Configure it through the environment or a config file
# mounted at /app/config.toml (docs/deployment.md).

# 1. The page's bundle (chatsock-client, marked, DOMPurify, highlight.js, built by
# esbuild) and socket.io-client, at the versions the package-lock.json files pin.
FROM node:22-bookworm-slim AS client
WORKDIR /build
COPY clients/js/package.json clients/js/package-lock.json ./clients/js/
RUN cd clients/js && npm ci --no-audit --no-fund --loglevel=error --ignore-scripts
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY clients/js ./clients/js
RUN cd clients/js && npm run --silent build
COPY scripts/build_page.mjs ./scripts/
COPY chatsock/static ./chatsock/static
RUN node scripts/build_page.mjs

# 2. chatsock and its runtime dependencies, installed into a virtualenv.
FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /opt/chatsock
COPY pyproject.toml README.md requirements.lock ./
COPY chatsock ./chatsock
# Shipped in the package beside the page (chatsock/web.py looks there first).
COPY --from=client /build/node_modules/socket.io-client/dist/socket.io.min.js \
    ./chatsock/static/vendor/socket.io.min.js
COPY --from=client /build/chatsock/static/dist ./chatsock/static/dist
# The lock pins the test tools too, but `-c` makes it constraints only: what is
# installed is pyproject.toml's runtime `dependencies`, at the versions CI tested.
RUN /opt/chatsock/bin/pip install --no-cache-dir --disable-pip-version-check \
        -c requirements.lock . \
    && /opt/chatsock/bin/chatsock --help > /dev/null

# 3. The runtime image.
FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin chatsock
COPY --from=build /opt/chatsock /opt/chatsock
ENV PATH=/opt/chatsock/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# chatsock reads ./config.toml when it exists: mount one here, or point
# CHATSOCK_CONFIG elsewhere. The image holds none, so everything else comes
# from the environment (CHATSOCK_<SECTION>__<KEY>, REDIS_URL, provider keys).
WORKDIR /app
USER 10001:10001
EXPOSE 8080
# SIGTERM starts the drain (server.drain_timeout_s); the process exits within
# drain_timeout_s + shutdown_grace_s + 1 s, so give it that long (compose's
# stop_grace_period, Kubernetes' terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
# Ready: the store answers, the background loops run, not draining.
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/readyz', timeout=2)"]
CMD ["chatsock", "serve", "--host", "0.0.0.0", "--port", "8080"]
