# The operator image: the package and its pinned dependencies (constraints.txt) in a
# virtualenv on a slim Python base, run as an unprivileged numeric user so Kubernetes
# can enforce runAsNonRoot. Works with a read-only root filesystem (the chart mounts an
# emptyDir on /tmp). Build: `make image` (hack/image.sh; also without a registry) or
# `docker build -t prefect-workpool-operator:dev .`
ARG PYTHON_IMAGE=python:3.11.15-slim-trixie

# The runtime requirements, read from pyproject.toml: an edit elsewhere in that file yields
# the same list, so the dependency layer below stays cached.
FROM ${PYTHON_IMAGE} AS requirements
WORKDIR /src
COPY pyproject.toml ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" > requirements.txt

FROM ${PYTHON_IMAGE} AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# The package itself goes to /opt/app (its own layer below); a .pth puts it on the venv's path.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/python -c "import pathlib, sysconfig; pathlib.Path(sysconfig.get_path('purelib'), 'prefect_workpool_operator_app.pth').write_text('/opt/app\n')"
WORKDIR /src
# Dependencies first, without the package's code, so editing operator/ reuses this layer.
# setuptools here too: the package is then built without fetching its backend again.
COPY constraints.txt ./
COPY --from=requirements /src/requirements.txt ./
RUN /opt/venv/bin/pip install --constraint constraints.txt --requirement requirements.txt "setuptools>=69"

FROM deps AS build
# The code: only the package itself, its dependencies being in place.
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation --target /opt/app . \
 && /opt/venv/bin/python -c "import prefect_workpool_operator.handlers.startup, prefect_workpool_operator.handlers.policy"

FROM ${PYTHON_IMAGE}
# The release's version (make release passes it); it matches pyproject.toml and the chart's appVersion.
ARG VERSION=dev
LABEL org.opencontainers.image.title="prefect-workpool-operator" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.description="Kubernetes operator that keeps Prefect work pools on AWS ECS healthy" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=deps /opt/venv /opt/venv
# A code change rewrites only this layer.
COPY --from=build /opt/app /opt/app
# Bytecode was compiled at install time; nothing may be written at run time.
ENV PATH=/opt/app/bin:/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 65532:65532
# 8080: /metrics (PWO_METRICS_PORT), 8081: kopf /healthz (PWO_LIVENESS_ENDPOINT), as the chart sets them.
EXPOSE 8080 8081
ENTRYPOINT ["python", "-m", "prefect_workpool_operator"]
