"""A strict fake ROS 2 runtime for testing ``posenet_ros.node`` where ROS 2 cannot be installed
(DESIGN.md section 6). ``install()`` puts the fake ``rclpy``, ``tf2_ros``, ``ament_index_python``
and message packages (generated from rosbags' copies of the real definitions) on ``sys.path`` /
``sys.modules``; ``uninstall()`` removes them. Signatures of the rclpy parts the node uses are
checked against the real rclpy source by ``test_rclpy_conformance.py``: a fake that accepts what
rclpy would refuse is a bug.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FAKE_ROOTS = ("rclpy", "tf2_ros", "ament_index_python", "cv_bridge")


def install(with_cv_bridge: bool = False) -> None:
    from . import messages

    uninstall()
    sys.path.insert(0, str(HERE))
    if with_cv_bridge:
        sys.path.insert(0, str(HERE / "fake_cv_bridge"))
    messages.install_message_modules()


def uninstall() -> None:
    from . import messages

    for entry in (str(HERE), str(HERE / "fake_cv_bridge")):
        while entry in sys.path:
            sys.path.remove(entry)
    roots = set(FAKE_ROOTS) | set(messages.PACKAGES)
    for name in list(sys.modules):
        if name.split(".")[0] in roots:
            del sys.modules[name]
