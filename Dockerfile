# GPU image for the paper profile: TensorFlow with CUDA, the package, and the pipeline.
#   docker build -t foramdeepslice .
#   docker run --gpus all -v "$PWD/data:/work/data" foramdeepslice
FROM tensorflow/tensorflow:2.21.0-gpu

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    DVC_NO_ANALYTICS=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends git make nodejs npm \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /work
COPY . /work
RUN python -m pip install --no-cache-dir -e ".[dev]"

CMD ["dvc", "repro"]
