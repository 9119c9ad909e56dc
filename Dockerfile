# The sparsectr pipeline image: every Kubeflow Pipelines step (TFX components, the gates, the
# ExampleGen driver) and the CronJob that submits the nightly run use it. The compiled spec names it
# (kubeflow.image in pipelines/config.py) and sets each step's command
# (python -m tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor), so no ENTRYPOINT here.
#
#   docker build --build-arg BASE_IMAGE=python:3.10-slim@sha256:<digest> -t ghcr.io/sparsectr/pipeline:0.1.0 .
#   docker push ghcr.io/sparsectr/pipeline:0.1.0
#
# Pin the base image by digest (docker buildx imagetools inspect python:3.10-slim shows it; docs/kubeflow.md
# "The pipeline image"); the default below is the tag.
ARG BASE_IMAGE=python:3.10-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_USE_LEGACY_KERAS=1 \
    PYTHONPATH=/app \
    TF_CPP_MIN_LOG_LEVEL=3 \
    GRPC_VERBOSITY=ERROR \
    PYTHONWARNINGS="ignore:You are using a non-supported Python version:FutureWarning,ignore:Support for google-cloud-storage < 3.0.0 will be removed:FutureWarning"

# The resolved TFX 1.16 stack, exactly as pinned (the lock is complete: no dependency resolution), every
# file checked against the lock's sha256 (--require-hashes), pip itself too. Not installed: the notebook
# and Jupyter servers (and notebook converters) the lock carries for TFMA's notebook extras; no pipeline
# step or the CronJob imports them (tests/pipelines/test_kubeflow.py checks). TFMA imports ipywidgets,
# which imports the kernel's client side (ipykernel, jupyter_client, pyzmq): those stay. Not installed
# either: rfc3987-syntax with its parser lark (an optional format check of jsonschema's, which compiles
# its grammar at import). The tests' kubernetes-validate is not in this lock (requirements-test.lock):
# `import kubernetes`, which TFX's components import in every step, imports it where it is installed.
# A compiler only for the few pins without a manylinux wheel (e.g. pyfarmhash), removed afterwards.
COPY requirements.lock /tmp/requirements.lock
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && echo "pip==24.3.1 --hash=sha256:3790624780082365f47549d032f3770eeb2b1e8bd1f7b2e02dace1afa361b4ed" > /tmp/pip.lock \
    && pip install --require-hashes --no-deps -r /tmp/pip.lock \
    && grep -v -i -E '^(notebook|notebook_shim|jupyterlab|jupyterlab_server|jupyterlab_widgets|jupyterlab_pygments|jupyter_server|jupyter_server_terminals|jupyter-lsp|jupyter-events|jupyter_builder|terminado|widgetsnbextension|nbconvert|nbclient|Send2Trash|argon2-cffi|argon2-cffi-bindings|async-lru|json5|rfc3987-syntax|lark)==' \
       /tmp/requirements.lock > /tmp/image.lock \
    && pip install --require-hashes --no-deps -r /tmp/image.lock \
    && apt-get purge -y build-essential && apt-get autoremove -y \
    && rm -rf /var/lib/apt/lists/* /tmp/requirements.lock /tmp/image.lock /tmp/pip.lock

WORKDIR /app
COPY components /app/components
COPY pipelines /app/pipelines
COPY optim /app/optim
COPY serving /app/serving
# KFP's system.HTML artifact type for TFX (the run report the Kubeflow Pipelines UI renders).
COPY system /app/system
# sparsectr.<Class>: how the Kubeflow steps import our own artifact types back (sparsectr/__init__.py).
COPY sparsectr /app/sparsectr

# The CronJob runs as uid 1000 with a read-only root filesystem (HOME=/tmp, an emptyDir).
RUN useradd --uid 1000 --create-home --home-dir /home/sparsectr sparsectr \
    && python -c "import components, pipelines, optim, serving, system, sparsectr"
USER 1000
