"""Launch the sa2va lifecycle node with config/sa2va.yaml, its relative topics remapped to a camera.

    ros2 launch sa2va_ros sa2va.launch.py image:=/camera/color/image_raw

With the default ``autostart: true`` the node configures and activates itself; set it to false in the
parameter file to leave the transitions to a lifecycle manager.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode


def generate_launch_description() -> LaunchDescription:
    default_params = os.path.join(get_package_share_directory("sa2va_ros"), "config", "sa2va.yaml")
    image = LaunchConfiguration("image")
    return LaunchDescription(
        [
            DeclareLaunchArgument("params_file", default_value=default_params, description="node parameters"),
            DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
            DeclareLaunchArgument(
                "image",
                default_value="/camera/color/image_raw",
                description="camera image topic (its /compressed sibling when image_transport is compressed)",
            ),
            DeclareLaunchArgument("command", default_value="command", description="command topic"),
            LifecycleNode(
                package="sa2va_ros",
                executable="sa2va_node",
                name="sa2va",
                namespace=LaunchConfiguration("namespace"),
                parameters=[LaunchConfiguration("params_file")],
                remappings=[
                    ("image", image),
                    ("image/compressed", [image, "/compressed"]),
                    ("command", LaunchConfiguration("command")),
                ],
                output="screen",
                emulate_tty=True,
            ),
        ]
    )
