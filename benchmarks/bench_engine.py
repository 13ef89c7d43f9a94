"""Engine vs public-port baseline, same run, same frames. Same as `posenet-ros bench`.

Usage: python benchmarks/bench_engine.py [--model M.pt] [--iterations N] [--threads T] [--json OUT]
"""

import sys

from posenet_ros.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
