"""posenet_train: datasets, training, evaluation and export of PoseNet models for posenet_ros.

Imports the shared model, geometry and contract from ``posenet_ros``; never imports ROS.
"""
