"""Pose estimation on a live camera: `ros2 launch selfpose_ros estimator.launch.py model:=/path/to/bundle`.

Defaults come from config/estimator.yaml; the launch arguments below override them. The node's relative topics
(color/image_raw, color/camera_info, aligned_depth_to_color/image_raw) are remapped under ``camera:=`` (default:
/camera/camera, the RealSense ROS 2 wrapper's namespace; e.g. camera:=/camera for other drivers).
The estimator is a lifecycle node: it configures and activates itself unless ``autostart:=false``, which leaves it
unconfigured for a lifecycle manager or `ros2 lifecycle set /selfpose_estimator configure` (then ``activate``).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

# launch argument -> (node parameter, type, default, description)
OVERRIDES = {
    "model": ("model", str, "", "model bundle directory written by `selfpose adapt`"),
    "autostart": ("autostart", bool, "true", "configure and activate at start-up (false: lifecycle transitions)"),
    "use_depth": ("use_depth", bool, "false", "also use the aligned depth image"),
    "device": ("device", str, "cpu", "torch device: cpu, cuda, cuda:1 ..."),
    "num_threads": ("num_threads", int, "0", "torch CPU threads (0: default)"),
    "score_threshold": ("score_threshold", float, "0.3", "publish objects with confidence >= this"),
    "max_rate": ("max_rate", float, "0.0", "estimation rate limit in Hz (0: as fast as the model runs)"),
    "publish_tf": ("publish_tf", bool, "true", "broadcast camera -> object TF frames"),
    "publish_markers": ("publish_markers", bool, "true", "publish RViz mesh markers"),
    "publish_overlay": ("publish_overlay", bool, "true", "publish the overlay image"),
    "image_transport": ("image_transport", str, "raw", "raw or compressed colour images"),
    "reload_on_adapt": ("reload_on_adapt", bool, "false", "swap in each bundle the adapt_server announces"),
}


def generate_launch_description() -> LaunchDescription:
    camera = LaunchConfiguration("camera")
    config = LaunchConfiguration("config")
    args = [
        DeclareLaunchArgument("camera", default_value="/camera/camera",
                              description="namespace of the camera driver's topics"),
        DeclareLaunchArgument("config", default_value=PathJoinSubstitution(
            [FindPackageShare("selfpose_ros"), "config", "estimator.yaml"]), description="parameter file"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the estimator node"),
    ]
    args += [DeclareLaunchArgument(name, default_value=default, description=text)
             for name, (_, _, default, text) in OVERRIDES.items()]
    overrides = {param: ParameterValue(LaunchConfiguration(name), value_type=kind)
                 for name, (param, kind, _, _) in OVERRIDES.items()}
    node = LifecycleNode(
        package="selfpose_ros",
        executable="estimator",
        name="selfpose_estimator",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[config, overrides],
        remappings=[
            ("color/image_raw", [camera, "/color/image_raw"]),
            ("color/image_raw/compressed", [camera, "/color/image_raw/compressed"]),
            ("color/camera_info", [camera, "/color/camera_info"]),
            ("aligned_depth_to_color/image_raw", [camera, "/aligned_depth_to_color/image_raw"]),
        ],
    )
    return LaunchDescription(args + [node])
