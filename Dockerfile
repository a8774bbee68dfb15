# Radnode on a CUDA runtime, so that onnxruntime-gpu finds CUDA 13 and cuDNN 9 when
# the container is given a GPU; without one, ONNX Runtime runs on the CPU.
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv dcmtk \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home-dir /var/lib/radnode --create-home radnode

WORKDIR /opt/radnode
COPY pyproject.toml README.md ./
COPY node ./node
COPY models ./models
COPY config ./config
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install .

ENV PATH=/opt/venv/bin:$PATH
USER radnode
VOLUME ["/var/lib/radnode"]
EXPOSE 11112
ENTRYPOINT ["radnode"]
CMD ["serve", "--config", "/opt/radnode/config/compose.yaml"]
