# The sparsectr pipeline image: every Kubeflow Pipelines step (TFX components, the gates, the
# ExampleGen driver) and the CronJob that submits the nightly run use it. The compiled spec names it
# (kubeflow.image in pipelines/config.py) and sets each step's command
# (python -m tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor), so no ENTRYPOINT here.
#
#   docker build -t ghcr.io/sparsectr/pipeline:0.1.0 .
#   docker push ghcr.io/sparsectr/pipeline:0.1.0
FROM python:3.10-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_USE_LEGACY_KERAS=1 \
    PYTHONPATH=/app \
    TF_CPP_MIN_LOG_LEVEL=3 \
    GRPC_VERBOSITY=ERROR \
    PYTHONWARNINGS="ignore:You are using a non-supported Python version:FutureWarning,ignore:Support for google-cloud-storage < 3.0.0 will be removed:FutureWarning"

# The resolved TFX 1.16 stack, exactly as pinned (the lock is complete: no dependency resolution).
# A compiler only for the few pins without a manylinux wheel (e.g. pyfarmhash), removed afterwards.
COPY requirements.lock /tmp/requirements.lock
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && pip install --no-deps -r /tmp/requirements.lock \
    && apt-get purge -y build-essential && apt-get autoremove -y \
    && rm -rf /var/lib/apt/lists/* /tmp/requirements.lock

WORKDIR /app
COPY components /app/components
COPY pipelines /app/pipelines
COPY optim /app/optim
COPY serving /app/serving
# KFP's system.HTML artifact type for TFX (the run report the Kubeflow Pipelines UI renders).
COPY system /app/system

# The CronJob runs as uid 1000 with a read-only root filesystem (HOME=/tmp, an emptyDir).
RUN useradd --uid 1000 --create-home --home-dir /home/sparsectr sparsectr \
    && python -c "import components, pipelines, optim, serving, system"
USER 1000
