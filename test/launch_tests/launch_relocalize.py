"""launch_testing: the real node on a real ROS 2 install, started by the package's launch file with
its defaults (the bundled model, found relative to the share directory, and config/relocalize.yaml),
fed synthetic images; it must publish poses with the images' stamps and the map->camera TF.

Run by ``launch_test`` (test_node_ros.py does, with the colcon-built package and a private domain);
the file name keeps pytest from collecting it directly."""

from __future__ import annotations

import time
import unittest

import launch_testing.actions
import numpy as np
import pytest
import rclpy
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare

import launch


@pytest.mark.launch_test
def generate_test_description():
    include = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(
            PathJoinSubstitution([FindPackageShare("posenet_ros"), "launch", "relocalize.launch.py"])
        ),
        launch_arguments={"device": "cpu", "image_topic": "/test_camera/image_raw"}.items(),
    )
    return launch.LaunchDescription([include, launch_testing.actions.ReadyToTest()])


class TestRelocalizerNode(unittest.TestCase):
    def test_poses_and_tf_for_published_images(self) -> None:
        from geometry_msgs.msg import PoseStamped
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image
        from tf2_msgs.msg import TFMessage

        rclpy.init()
        node = rclpy.create_node("posenet_launch_test")
        poses, tfs = [], []
        node.create_subscription(PoseStamped, "/posenet_relocalizer/pose", poses.append, 10)
        node.create_subscription(TFMessage, "/tf", tfs.append, 10)
        pub = node.create_publisher(Image, "/test_camera/image_raw", qos_profile_sensor_data)
        rng = np.random.default_rng(0)
        sent = []
        deadline = time.monotonic() + 60.0
        try:
            while time.monotonic() < deadline and len(poses) < 3:
                msg = Image(height=240, width=320, encoding="rgb8", step=960)
                msg.data = rng.integers(0, 256, 240 * 320 * 3, dtype=np.uint8).tobytes()
                msg.header.frame_id = "camera_optical"
                msg.header.stamp = node.get_clock().now().to_msg()
                sent.append((msg.header.stamp.sec, msg.header.stamp.nanosec))
                pub.publish(msg)
                rclpy.spin_once(node, timeout_sec=0.5)
            self.assertGreaterEqual(len(poses), 3, "no poses from the node")
            for p in poses:
                self.assertIn((p.header.stamp.sec, p.header.stamp.nanosec), sent)
                self.assertEqual(p.header.frame_id, "map")
                q = p.pose.orientation
                self.assertAlmostEqual(q.x**2 + q.y**2 + q.z**2 + q.w**2, 1.0, places=6)
            children = {t.child_frame_id for m in tfs for t in m.transforms if t.header.frame_id == "map"}
            self.assertIn("camera_optical", children)
        finally:
            node.destroy_node()
            rclpy.shutdown()
