"""ros2 launch posenet_ros relocalize.launch.py [model:=...] [image_topic:=...] [compressed:=true] ...

Starts the PoseNet relocalization node with config/relocalize.yaml, then the overrides given here.
"""

from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

ARGUMENTS = (
    ("model", "models/posenet_demo.pt", "TorchScript model: absolute, or relative to the package share dir"),
    ("map", "", "3D map for refinement (posenet-train map): absolute, or relative to the share dir; empty: off"),
    ("image_topic", "/camera/image_raw", "camera image topic (the node adds /compressed when compressed:=true)"),
    (
        "camera_info_topic",
        "",
        "the camera's CameraInfo; empty: camera_info next to image_topic (image_transport's); none: not subscribed",
    ),
    ("compressed", "false", "subscribe to sensor_msgs/CompressedImage on <image_topic>/compressed"),
    ("params_file", "", "parameter YAML; empty: config/relocalize.yaml from the package share dir"),
    ("use_sim_time", "false", "use /clock (ros2 bag play --clock)"),
    ("namespace", "", "namespace for the node, its topics and /tf, /tf_static"),
    ("device", "auto", "auto, cpu, cuda or cuda:N"),
    ("precision", "auto", "fp32, fp16/bf16 (CUDA; bf16 on CPUs that run it natively) or auto"),
    ("tf_mode", "map_to_camera", "map_to_camera, map_to_base, map_to_odom or none"),
    ("pose_frame", "auto", "whose pose the pose topics carry: camera, base or auto (base with a base or odom tf_mode)"),
    ("log_level", "info", "node log level"),
)


def generate_launch_description():
    args = [DeclareLaunchArgument(name, default_value=default, description=doc) for name, default, doc in ARGUMENTS]
    cfg = {name: LaunchConfiguration(name) for name, _, _ in ARGUMENTS}
    default_params = PathJoinSubstitution([FindPackageShare("posenet_ros"), "config", "relocalize.yaml"])
    params_file = PythonExpression(["'", cfg["params_file"], "' or '", default_params, "'"])
    image = cfg["image_topic"]
    # A camera driver publishes <ns>/image_raw beside <ns>/camera_info.
    sibling_info = PythonExpression(["'/'.join('", image, "'.split('/')[:-1] + ['camera_info'])"])
    info = cfg["camera_info_topic"]
    overrides = {
        "model_path": cfg["model"],
        "map_path": cfg["map"],
        "camera_info_topic": PythonExpression(
            ["'' if '", info, "' == 'none' else ('", info, "' or '", sibling_info, "')"]  # none: not subscribed
        ),
        "compressed": ParameterValue(cfg["compressed"], value_type=bool),
        "use_sim_time": ParameterValue(cfg["use_sim_time"], value_type=bool),
        "device": cfg["device"],
        "precision": cfg["precision"],
        "tf_mode": cfg["tf_mode"],
        "pose_frame": cfg["pose_frame"],
    }
    remappings = [("image", image), ("image/compressed", [image, "/compressed"])]

    def node(condition, extra_remaps):
        return Node(
            package="posenet_ros",
            executable="relocalize_node",
            name="posenet_relocalizer",
            namespace=cfg["namespace"],
            parameters=[params_file, overrides],  # the YAML first, then the launch overrides
            remappings=remappings + extra_remaps,
            arguments=["--ros-args", "--log-level", cfg["log_level"]],
            output="screen",
            condition=condition,
        )

    # Under a namespace, TF goes to <namespace>/tf like the rest of a namespaced robot.
    namespaced = PythonExpression(["'", cfg["namespace"], "' != ''"])
    with_namespace = node(IfCondition(namespaced), [("/tf", "tf"), ("/tf_static", "tf_static")])
    return LaunchDescription([*args, with_namespace, node(UnlessCondition(namespaced), [])])
