"""Sample and evaluate a trained checkpoint from Python (docs/python.md).

    vsmd fit --config configs/spiral8y.yaml      # or another unconditional model: toys, vectors, images
    python examples/sample_checkpoint.py runs/spiral8y/version_0/checkpoints/last.ckpt --sampler ei --nfe 20

The checkpoint passes the checks of `vsmd test` (CRC, weights_only); the samples are written to samples.npy in the
data's coordinates. Forecasters and trajectory models do not sample unconditionally: use `model.forecast` and
`model.trajectories` (docs/python.md).
"""

from __future__ import annotations

import argparse

import numpy as np

import vsmd
from vsmd.checkpointing import CheckpointError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a .ckpt written by vsmd fit (or vsmd.fit)")
    parser.add_argument("--sampler", default=None, help="heun, sscs, em or ei (default: the model's)")
    parser.add_argument("--nfe", type=int, default=None, help="network evaluations per sample (default: the model's)")
    parser.add_argument("--n", type=int, default=2000, help="samples to draw")
    parser.add_argument("--out", default="samples.npy", help="where the samples go")
    args = parser.parse_args()

    try:
        model = vsmd.load(args.checkpoint)  # the checks of `vsmd test`: a damaged or foreign file is refused
    except CheckpointError as err:
        parser.error(str(err))
    print(model)

    try:
        samples = model.sample(args.n, sampler=args.sampler, nfe=args.nfe, seed=0)
    except (TypeError, ValueError) as err:  # a forecaster or trajectory model, or an NFE the sampler cannot make
        parser.error(str(err))
    np.save(args.out, samples.numpy())
    print(f"wrote {tuple(samples.shape)} samples to {args.out}")

    settings = {"sampler": args.sampler} if args.sampler else {}
    if args.nfe:
        settings["nfe"] = args.nfe
    metrics = vsmd.evaluate(model, **settings)  # vsmd test's metrics, with this sampler and NFE
    print("metrics: " + ", ".join(f"{k} {v:.3g}" for k, v in metrics.items() if v is not None))


if __name__ == "__main__":
    main()
