# jobferry's daemon in a container: `jobferry serve` as an unprivileged user, its data
# directory a volume, a health check on /healthz. The build needs no network: it
# installs from a wheelhouse made beforehand on a host that reaches PyPI.
#
#   scripts/docker-wheels                  # ./wheels: jobferry's wheel + its dependencies'
#   docker build -t jobferry .             # FROM python:3.11-slim (needs a registry)
#   docker build --build-arg BASE=jobferry-test/python:1 -t jobferry .   # a local base
#
# The base only needs python3 (3.11, or set PYTHON_VERSION for scripts/docker-wheels)
# with its venv module; neither pip nor ensurepip. Run it with --init (the daemon
# starts job processes; the init reaps what they leave behind):
#
#   docker run --init -d -p 127.0.0.1:8080:8080 -v jobferry-data:/var/lib/jobferry jobferry
ARG BASE=python:3.11-slim

# ---- build: a virtualenv at /opt/jobferry with the dependencies, installed offline
# from the wheelhouse; the engine reuses this stage while they stay the same.
FROM ${BASE} AS build
ENV PATH=/opt/jobferry/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INDEX=1
COPY wheels/deps /wheels/deps
RUN python3 -m venv --without-pip /opt/jobferry \
    && pip_wheel=$(echo /wheels/deps/pip-*.whl) \
    && /opt/jobferry/bin/python "$pip_wheel/pip" install --no-deps /wheels/deps/*.whl

# ---- the image: the virtualenv, a user, a configuration, a volume.
FROM ${BASE}
ARG UID=10001
ENV PATH=/opt/jobferry/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    JOBFERRY_CONFIG=/etc/jobferry/jobferry.yml \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INDEX=1
RUN groupadd --system --gid "$UID" jobferry \
    && useradd --system --uid "$UID" --gid jobferry --home-dir /var/lib/jobferry \
        --no-create-home --shell /usr/sbin/nologin jobferry \
    && mkdir -p /var/lib/jobferry \
    && chown jobferry:jobferry /var/lib/jobferry \
    && chmod 0750 /var/lib/jobferry
COPY --from=build /opt/jobferry /opt/jobferry
COPY conf/docker/jobferry.yml /etc/jobferry/jobferry.yml
# jobferry itself last: a code change rebuilds only this small layer.
COPY wheels/app /wheels/app
RUN pip install --no-deps /wheels/app/jobferry-*.whl && pip check && rm -rf /wheels
USER jobferry
WORKDIR /var/lib/jobferry
# The store (SQLite unless database.url says otherwise), job directories, the secret
# and the first admin's API key (admin-api-key). A new named volume takes this
# directory's owner; a bind-mounted directory must belong to $UID.
VOLUME ["/var/lib/jobferry"]
EXPOSE 8080
# Liveness only (no store access); /readyz says whether it can take jobs.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["jobferry", "serve"]
