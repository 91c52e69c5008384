# The one component image every pipeline step runs on (KFP / Vertex AI).
# Built from the same pinned requirements.txt as the local .venv (see Makefile), plus the
# image-only pins of requirements-image.txt (Beam's GCP extra, for Dataflow);
# tests/unit/test_packaging.py keeps the two in step.
#   docker build -t twotower:0.1.0 .   (then set pipeline.image to the pushed name)
#   docker build --build-arg ACCELERATOR=gpu -t twotower:0.1.0-gpu .   (for train.device=gpu)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TF_USE_LEGACY_KERAS=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/twotower

# Dataflow workers run this same image (transform.pipeline_options.sdk_container_image defaults to
# pipeline.image), so it carries Beam's worker boot program, from the Beam SDK image of the pinned
# Beam version and Python minor version, and (requirements-image.txt) Beam's GCP extra.
COPY --from=apache/beam_python3.11_sdk:2.77.0 /opt/apache/beam /opt/apache/beam

# Dependencies first so code edits do not invalidate the heavy layer.
COPY requirements.txt requirements-image.txt requirements-gpu.txt ./
RUN python -m pip install --no-cache-dir -r requirements.txt -r requirements-image.txt

# --build-arg ACCELERATOR=gpu: TensorFlow's CUDA libraries, for train.device=gpu (a few GB more;
# the default image is CPU-only and TensorFlow would see no GPU).
ARG ACCELERATOR=cpu
RUN if [ "$ACCELERATOR" = gpu ]; then python -m pip install --no-cache-dir -r requirements-gpu.txt; \
    elif [ "$ACCELERATOR" != cpu ]; then echo "ACCELERATOR must be cpu or gpu, got $ACCELERATOR" >&2; exit 1; fi

COPY setup.py README.md ./
COPY core ./core
COPY datagen ./datagen
COPY features ./features
COPY trainer ./trainer
COPY indexer ./indexer
COPY serving ./serving
COPY reports ./reports
COPY ui ./ui
COPY components ./components
COPY pipelines ./pipelines
# The shipped configs are package data (core/configs/*.yaml): the check loads one by name.
RUN python -m pip install --no-cache-dir --no-deps . \
    && cd / && python -c "import core, datagen, features, trainer, indexer, serving, reports, ui, components, pipelines; \
from core.config import load_config; load_config('shop')"

# Dataflow starts its workers through the image's entrypoint, which must be Beam's boot program.
# KFP and Vertex AI (pipeline steps, custom jobs) always set the command, so they never use it;
# for the CLI: docker run --entrypoint twotower IMAGE ...
ENTRYPOINT ["/opt/apache/beam/boot"]
