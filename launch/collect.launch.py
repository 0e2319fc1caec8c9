"""Record a keyframe sequence: `ros2 launch selfpose_ros collect.launch.py output:=/data/table_run`.

Defaults come from config/collect.yaml; the launch arguments below override them. The node's relative topics are
remapped under ``camera:=`` (default: /camera/camera, the RealSense ROS 2 wrapper's namespace). Stop with Ctrl-C:
the bag is closed and holds every keyframe written before.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

# launch argument -> (node parameter, type, default, description)
OVERRIDES = {
    "output": ("output", str, "", "rosbag2 directory to create"),
    "world_frame": ("world_frame", str, "odom", "fixed frame of the camera poses (odom or map)"),
    "camera_frame": ("camera_frame", str, "", "camera optical frame ('' = the images' frame_id)"),
    "use_depth": ("use_depth", bool, "true", "also record the aligned depth image"),
    "min_translation": ("min_translation", float, "0.05", "keyframe every this many metres"),
    "min_rotation": ("min_rotation", float, "5.0", "... or degrees"),
    "storage": ("storage", str, "mcap", "mcap or sqlite3"),
    "image_format": ("image_format", str, "raw", "raw, jpeg or png"),
    "image_transport": ("image_transport", str, "raw", "raw or compressed colour images"),
    "autostart": ("autostart", bool, "true", "record at start-up (false: wait for the ~/start service)"),
    "adapt_on_finish": ("adapt_on_finish", bool, "false", "send the Adapt goal for each recording closed by ~/stop"),
    "adapt_objects": ("adapt_objects", str, "", "objects.yaml of the Adapt goal"),
    "adapt_base_model": ("adapt_base_model", str, "", "pre-trained bundle of the Adapt goal"),
    "adapt_output": ("adapt_output", str, "", "bundle the Adapt goal writes ('' = <output>_model)"),
}


def generate_launch_description() -> LaunchDescription:
    camera = LaunchConfiguration("camera")
    args = [
        DeclareLaunchArgument("camera", default_value="/camera/camera",
                              description="namespace of the camera driver's topics"),
        DeclareLaunchArgument("config", default_value=PathJoinSubstitution(
            [FindPackageShare("selfpose_ros"), "config", "collect.yaml"]), description="parameter file"),
    ]
    args += [DeclareLaunchArgument(name, default_value=default, description=text)
             for name, (_, _, default, text) in OVERRIDES.items()]
    overrides = {param: ParameterValue(LaunchConfiguration(name), value_type=kind)
                 for name, (param, kind, _, _) in OVERRIDES.items()}
    node = Node(
        package="selfpose_ros",
        executable="collect_sequence",
        name="collect_sequence",
        output="screen",
        emulate_tty=True,
        parameters=[LaunchConfiguration("config"), overrides],
        remappings=[
            ("color/image_raw", [camera, "/color/image_raw"]),
            ("color/image_raw/compressed", [camera, "/color/image_raw/compressed"]),
            ("color/camera_info", [camera, "/color/camera_info"]),
            ("aligned_depth_to_color/image_raw", [camera, "/aligned_depth_to_color/image_raw"]),
        ],
        sigterm_timeout="20",
    )
    return LaunchDescription(args + [node])
