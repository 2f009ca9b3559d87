# syntax=docker/dockerfile:1
# whoexec: one image for the webhook (`serve`, the default) and the consumer (`consume`).

# whoexec's static env (staticenv/env.c): a plain `env` that sets the assignments and
# execs the command, statically linked, for pods whose images have none (distroless,
# scratch). The pod CREATE mutation's init container copies it into the pod. The
# compiler stays in this stage.
FROM python:3.11-slim-bookworm AS staticenv
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
COPY staticenv /src/staticenv
RUN mkdir -p /opt/whoexec/static && CC=gcc sh /src/staticenv/build /opt/whoexec/static/env

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/whoexec
COPY pyproject.toml README.md /src/
COPY webhook /src/webhook
# every dependency ships wheels (cryptography, orjson, psycopg[binary]): nothing compiles
RUN /opt/whoexec/bin/pip install --only-binary=:all: /src

# The Falco plugin (plugin/, docs/falco-plugin.md): libwhoexec.so, which the chart values in
# manifests/falco/values-plugin.yaml copy into Falco's pod. Built on bookworm: it needs a
# glibc >= 2.36 where Falco runs.
FROM rust:1-slim-bookworm AS plugin
COPY plugin/Cargo.toml plugin/Cargo.lock /src/plugin/
COPY plugin/src /src/plugin/src
COPY bench/plugin_runner.rs /src/bench/plugin_runner.rs
RUN cd /src/plugin && cargo build --release --locked --lib

FROM python:3.11-slim-bookworm
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="whoexec" \
      org.opencontainers.image.description="Attribute every Falco alert in a kubectl exec session to the Kubernetes user who opened it" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/whoexec/whoexec"
COPY --from=build /opt/whoexec /opt/whoexec
COPY --from=staticenv /opt/whoexec/static/env /opt/whoexec/static/env
COPY --from=plugin /src/plugin/target/release/libwhoexec.so /opt/whoexec/plugin/libwhoexec.so
ENV PATH=/opt/whoexec/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# a numeric, non-root user (the consumer DaemonSet overrides it: see docs/security.md)
USER 10001:10001
EXPOSE 8443 2802
ENTRYPOINT ["whoexec"]
CMD ["serve"]
