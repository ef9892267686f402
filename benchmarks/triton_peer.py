"""NVIDIA Triton serving the same maths, the speed peer of ``bench_protocols.py``.

    python benchmarks/triton_peer.py --http-port 8123    # in an environment with nvidia-pytriton

PyTriton's wheel ships a real Triton Inference Server that runs on a CPU; this binds one
model, ``convewma``, whose Python function is this repository's ``ConvEWMA`` with the
shipped weights (the same layer and fast path as the service), under Triton's dynamic
batcher, with one torch thread (the best setting measured on 2 cores, as for the service).
Inputs and outputs follow the service's: ``INPUT`` FP32 ``[N, T]`` in, ``SMOOTHED`` FP32
``[N, C, T]`` out. It prints ``ready`` once it serves, and stops on SIGTERM or SIGINT.

pytriton needs its own environment (it pins its own tritonclient); see benchmarks/README.md
("Protocols and Triton") for the set-up, including the ``LD_LIBRARY_PATH`` that Triton's
Python backend stub needs to load the same libpython as this interpreter.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.core.paths import DEFAULT_WEIGHTS  # noqa: E402
from app.core.weights import load_weights  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, default=0, help="default: http port + 1")
    parser.add_argument("--metrics-port", type=int, default=0, help="default: http port + 2")
    parser.add_argument("--max-batch-size", type=int, default=256, help="series per forward")
    parser.add_argument("--queue-delay-us", type=int, default=0, help="dynamic batcher max queue delay")
    parser.add_argument("--instances", type=int, default=1, help="model instances (Python processes)")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    args = parser.parse_args()

    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    torch.set_num_threads(args.torch_threads)
    model = load_weights(args.weights, device=torch.device("cpu")).model

    @batch
    def infer(INPUT: np.ndarray) -> dict[str, Any]:
        with torch.inference_mode():
            smoothed = model(torch.from_numpy(INPUT))
        return {"SMOOTHED": smoothed.numpy()}

    ports = (args.http_port, args.grpc_port or args.http_port + 1, args.metrics_port or args.http_port + 2)
    config = TritonConfig(
        http_address="127.0.0.1", http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2]
    )
    stop = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stop.set())
    with Triton(config=config) as triton:
        triton.bind(
            model_name="convewma",
            infer_func=[infer] * args.instances,
            inputs=[Tensor(name="INPUT", dtype=np.float32, shape=(-1,))],
            outputs=[Tensor(name="SMOOTHED", dtype=np.float32, shape=(-1, -1))],
            config=ModelConfig(
                max_batch_size=args.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=args.queue_delay_us),
            ),
            strict=False,
        )
        triton.run()
        print("ready", flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
