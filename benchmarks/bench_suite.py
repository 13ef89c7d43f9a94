"""The benchmark suite, every figure against a baseline measured in the same run. Same as
`posenet-ros bench` (`make bench`): end to end at 640x480 and 1920x1080 (float32 and int8 paths),
preprocessing, dense crops and the budget's choice, replay throughput, memory, latency at 10 Hz,
and on a CUDA device the gpu case; printed table plus `--json PATH`.

Usage: python benchmarks/bench_suite.py [--model M.pt] [--iterations N] [--threads T] [--cases e2e,...]
                                        [--backends torchscript,onnxruntime,onnxruntime-int8]
                                        [--memory-frames 1000,10000] [--paced-frames 50]
                                        [--gpu-device cuda] [--json OUT]
"""

import sys

from posenet_ros.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
