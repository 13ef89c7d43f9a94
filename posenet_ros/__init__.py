"""posenet_ros: real-time camera relocalization with PoseNet for ROS 2.

Only ``posenet_ros.node`` imports ROS; everything else runs in a plain Python environment.
"""

__version__ = "0.1.0"
