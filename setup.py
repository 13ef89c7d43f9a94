"""ament_python package setup; also a plain pip package (pip install -e .[dev]).

`colcon build` installs the executables into lib/posenet_ros (see setup.cfg) and launch/, config/,
models/ and package.xml into share/posenet_ros with the ament index marker.
"""

import re
from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "posenet_ros"
HERE = Path(__file__).resolve().parent
VERSION = re.search(r"<version>([^<]+)</version>", (HERE / "package.xml").read_text()).group(1)


# Offline replay (posenet-ros replay): bags, plots, progress bars.
REPLAY_EXTRAS = ["rosbags", "matplotlib", "tqdm"]
# The onnxruntime backend (onnx only for posenet-ros export-onnx).
ONNX_EXTRAS = ["onnx", "onnxruntime"]
# posenet_train: synthetic-scene textures, structure from motion, image headers, and everything replay needs.
TRAIN_EXTRAS = ["scikit-image", "pycolmap", "pillow", *REPLAY_EXTRAS]  # pillow: image sizes without decoding


def share(folder: str) -> tuple[str, list[str]]:
    return (f"share/{PACKAGE}/{folder}", sorted(p for p in glob(f"{folder}/*") if Path(p).is_file()))


setup(
    name=PACKAGE,
    version=VERSION,
    packages=find_packages(include=["posenet_ros", "posenet_ros.*", "posenet_train", "posenet_train.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        share("launch"),
        share("config"),
        share("models"),
    ],
    python_requires=">=3.10",
    # On a ROS machine these come from rosdep (package.xml); pip uses them in a plain venv.
    install_requires=["setuptools", "numpy", "opencv-python-headless", "pyyaml", "torch>=2.1"],
    extras_require={
        "dev": [
            "pytest",
            "hypothesis",
            "ruff",
            "pillow",  # the benchmark's public-port baseline resizes with PIL
            "catkin_pkg",
            "colcon-core",
            "colcon-ros",
            "colcon-python-setup-py",
            *ONNX_EXTRAS,
            *TRAIN_EXTRAS,  # rosbags also gives the fake ROS runtime its message classes
        ],
        "bench": ["pillow"],
        "replay": REPLAY_EXTRAS,
        "onnx": ONNX_EXTRAS,
        "train": TRAIN_EXTRAS,
    },
    zip_safe=True,
    maintainer="posenet_ros developers",
    maintainer_email="dev@posenet-ros.local",
    description="Real-time camera relocalization with PoseNet for ROS 2",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "posenet-ros = posenet_ros.cli:main",
            "posenet-train = posenet_train.cli:main",
            "relocalize_node = posenet_ros.node:main",
        ],
    },
)
