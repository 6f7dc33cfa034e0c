FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends nodejs npm make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY pyproject.toml README.md requirements.lock ./
COPY chatsock ./chatsock
# The runtime dependencies at the versions CI tested (the lock also pins the
# test tools; -c installs only what chatsock needs).
RUN pip install --no-cache-dir -c requirements.lock .
COPY static ./static
COPY config.toml ./
ENV PYTHONUNBUFFERED=1
EXPOSE 8080
CMD ["chatsock", "serve", "--host", "0.0.0.0", "--port", "8080"]
