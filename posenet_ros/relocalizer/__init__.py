"""Every decision the ROS node makes, without ROS, one concern per module: ``params`` (the parameter
table and its validation), ``frames`` (the frame path the node and the offline replay share),
``tf_plans`` (TF per mode, the base pose, the one-parent check), ``diagnostics`` (counters, rates,
levels) and ``messages`` (filling message objects by field name). ``posenet_ros.node`` only wires
rclpy to these.
"""
