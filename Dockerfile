# syntax=docker/dockerfile:1
# whoexec: one image for the webhook (`serve`, the default) and the consumer (`consume`).
# The bases are build arguments: e2e/image builds this file offline on equivalents made
# from Debian's packages (`--build-arg PYTHON_IMAGE=... --build-arg RUST_IMAGE=...`).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG RUST_IMAGE=rust:1-slim-bookworm

# whoexec's static env (staticenv/env.c): a plain `env` that sets the assignments and
# execs the command, statically linked, for pods whose images have none (distroless,
# scratch). The pod CREATE mutation's init container copies it into the pod. The
# compiler stays in this stage.
FROM ${PYTHON_IMAGE} AS staticenv
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
COPY staticenv /src/staticenv
RUN mkdir -p /opt/whoexec/static && CC=gcc sh /src/staticenv/build /opt/whoexec/static/env

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/whoexec
COPY pyproject.toml README.md /src/
COPY webhook /src/webhook
# every dependency ships wheels (cryptography, orjson, psycopg[binary]): nothing compiles
# Then out goes what the runtime never runs: pip and setuptools, the test suites some
# wheels ship (gevent's holds private keys), and the kubernetes client's asyncio copy
# (kubernetes/aio, 68 MB; whoexec uses the synchronous client)
RUN /opt/whoexec/bin/pip install --only-binary=:all: /src \
 && /opt/whoexec/bin/pip uninstall --yes --quiet pip setuptools \
 && find /opt/whoexec/lib/python3*/site-packages -mindepth 2 -maxdepth 3 -type d \
      \( -name tests -o -name test \) -prune -exec rm -rf {} + \
 && rm -rf /opt/whoexec/lib/python3*/site-packages/kubernetes/aio

# The Falco plugin (plugin/, docs/falco-plugin.md): libwhoexec.so, which the chart values in
# manifests/falco/values-plugin.yaml copy into Falco's pod. Built on bookworm: it needs a
# glibc >= 2.36 where Falco runs.
FROM ${RUST_IMAGE} AS plugin
COPY plugin/Cargo.toml plugin/Cargo.lock /src/plugin/
COPY plugin/src /src/plugin/src
COPY bench/plugin_runner.rs /src/bench/plugin_runner.rs
RUN cd /src/plugin && cargo build --release --locked --lib

FROM ${PYTHON_IMAGE}
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
