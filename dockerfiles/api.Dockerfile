# syntax=docker/dockerfile:1
# Prediction API on the CPU over an ONNX export: numpy and onnxruntime, no training stack (no GPU,
# no run directory, no deep-learning framework in the image). Build from the project root, after
# exporting a run into the build context:
#   esmtune export runs/my_run --format onnx --out export
#   docker build -f dockerfiles/api.Dockerfile -t esmtune-api .      (--build-arg EXPORT=other/dir)
#   docker run --rm -p 8000:8000 esmtune-api                         (then open http://localhost:8000/)
#   docker run --rm -p 8000:8000 esmtune-api --workers 2             (more `esmtune serve` options)
FROM python:3.12-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

COPY pyproject.toml README.md LICENSE ./
COPY src ./src
# The runtime and the server only: the export path needs nothing of the train extra
# (tests/test_dockerfiles.py checks what this installs). pyproject.toml bounds the versions
# (hadolint asks for a pin).
# hadolint ignore=DL3013
RUN pip install ".[serve]"

ARG EXPORT=export/
# COPY keeps the build context's modes; a+rX lets the unprivileged user below read every file
# (and enter every folder) of the export, whatever umask it was written under. Symbolic modes
# need Dockerfile syntax >= 1.14, which the syntax line above selects.
COPY --chmod=a+rX ${EXPORT} /model

RUN useradd --create-home --uid 10001 esmtune
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
ENTRYPOINT ["esmtune", "serve", "/model", "--host", "0.0.0.0", "--port", "8000"]
