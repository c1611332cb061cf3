# GPU image for vsmd: the official PyTorch CUDA runtime image, the project installed on top of the image's own
# torch/torchvision (the constraints file makes pip fail rather than replace them), run as a non-root user.
#   docker build -t vsmd .
#   docker run --gpus all --shm-size 8g -v "$PWD/data:/data" -v "$PWD/runs:/runs" -v vsmd-cache:/cache vsmd \
#       vsmd fit --config configs/cifar10.yaml --data.init_args.root /data --trainer.logger.init_args.save_dir /runs
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    XDG_CACHE_HOME=/cache TORCH_HOME=/cache/torch MPLCONFIGDIR=/cache/matplotlib

WORKDIR /workspace
COPY pyproject.toml README.md ./
COPY vsmd ./vsmd
COPY configs ./configs
RUN python -m pip freeze | grep -iE '^(torch|torchvision)==' > /tmp/torch-constraints.txt \
    && python -m pip install -c /tmp/torch-constraints.txt . \
    && python -c "import torch, vsmd; print('torch', torch.__version__)"

RUN useradd --create-home --uid 1000 vsmd \
    && mkdir -p /data /runs /cache \
    && chown -R vsmd /data /runs /cache /workspace
USER vsmd
VOLUME ["/data", "/runs", "/cache"]
CMD ["vsmd", "--help"]
