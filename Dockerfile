# The Home Assistant add-on's image (config.yaml beside it). The Supervisor builds it on the user's
# machine from this folder, the repository root, with `--build-arg BUILD_ARCH=... BUILD_VERSION=...`;
# for the plain image see docker/Dockerfile. By hand:
#   docker build --build-arg BUILD_ARCH=amd64 --build-arg BUILD_VERSION=0.1.0 -t capture-bridge-addon .
#
# No build.yaml: the Supervisor of 2026 deprecates it and passes no BUILD_FROM without it, and
# older ones would pass an Alpine BUILD_FROM; the base is therefore our own argument, pinned by
# digest to the same image as docker/Dockerfile.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY requirements.lock ./
RUN python3 -m venv /opt/build \
 && /opt/build/bin/pip download --require-hashes --only-binary=:all: --dest /wheels -r requirements.lock
COPY pyproject.toml README.md LICENSE ./
COPY bridge ./bridge
RUN /opt/build/bin/pip wheel --no-index --find-links /wheels --no-deps --wheel-dir /wheels . \
 && python3 -m venv --without-pip /opt/venv \
 && /opt/build/bin/pip --python /opt/venv/bin/python install --no-index --find-links /wheels \
      /wheels/capture_bridge-*.whl

FROM ${PYTHON_IMAGE}
ARG BUILD_ARCH
ARG BUILD_VERSION
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*
COPY --from=build /opt/venv /opt/venv
# Root, unlike docker/Dockerfile: the Supervisor mounts /data owned by root, and add-ons run as root
# inside their container (AppArmor and the Supervisor's own isolation confine them).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /data
# The labels the Supervisor's builder would add, so an image built elsewhere is an add-on image too.
LABEL io.hass.type="addon" \
      io.hass.name="capture-bridge" \
      io.hass.description="Take dashcam photos and clips of GPS trackers from Home Assistant over MQTT" \
      io.hass.arch="${BUILD_ARCH}" \
      io.hass.version="${BUILD_VERSION}" \
      org.opencontainers.image.title="capture-bridge Home Assistant add-on" \
      org.opencontainers.image.licenses="MIT"
ENTRYPOINT ["tini", "--", "python", "-m", "bridge.addon"]
