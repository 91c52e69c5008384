# The one component image every pipeline step runs on (KFP / Vertex AI).
# Built from the same pinned requirements.txt as the local .venv (see Makefile);
# tests/unit/test_packaging.py keeps the two in step.
#   docker build -t twotower:0.1.0 .   (then set pipeline.image to the pushed name)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TF_USE_LEGACY_KERAS=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/twotower

# Dependencies first so code edits do not invalidate the heavy layer.
COPY requirements.txt ./
RUN python -m pip install --no-cache-dir -r requirements.txt

COPY setup.py README.md ./
COPY core ./core
COPY datasets ./datasets
COPY features ./features
COPY trainer ./trainer
COPY indexer ./indexer
COPY serving ./serving
COPY reports ./reports
COPY ui ./ui
COPY components ./components
COPY pipelines ./pipelines
COPY configs ./configs
RUN python -m pip install --no-cache-dir --no-deps . \
    && python -c "import core, features, trainer, indexer, serving, reports, ui, components, pipelines"

ENTRYPOINT ["twotower"]
