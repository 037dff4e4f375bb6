# syntax=docker/dockerfile:1
# Training on NVIDIA GPUs: PyTorch's CUDA image plus esmtune. Build from the project root:
#   docker build -f dockerfiles/train.Dockerfile -t esmtune-train .
#   docker run --rm --gpus all --shm-size 8g -v "$PWD/data:/data:ro" -v "$PWD/runs:/runs" esmtune-train
#   docker run ... esmtune-train --config configs/binary.yaml training.epochs=5   (replaces the CMD)
# Mounts:
#   /data  the dataset; configs/train.yaml reads `data`, which points here (read-only is enough)
#   /runs  run directories are written here (every shipped config writes to `runs`)
#   /hf    optional: the Hugging Face cache, so ESM2 weights are downloaded once (-v hf:/hf)
# GPUs and mixed precision come from configs/accelerate.yaml (e.g. num_processes: 4).
ARG BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HOME=/hf
WORKDIR /app

COPY pyproject.toml README.md LICENSE ./
COPY src ./src
# Keep the image's CUDA torch: the constraint makes pip fail rather than swap in another build.
RUN python -c "import torch; print(f'torch=={torch.__version__}')" > /tmp/torch.txt \
    && pip install --constraint /tmp/torch.txt ".[train]" \
    && rm /tmp/torch.txt

COPY configs ./configs
COPY examples ./examples
# The configs' relative paths `data` and `runs` lead to the mount points.
RUN ln -s /data data && ln -s /runs runs

ENTRYPOINT ["accelerate", "launch", "--config_file", "configs/accelerate.yaml", "-m", "esmtune", "train"]
CMD ["--config", "configs/train.yaml"]
