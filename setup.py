"""pip installation of selfpose (no ROS needed): the core library, the ROS node modules and the `selfpose` command.

In a ROS 2 workspace the package is built by colcon through CMakeLists.txt instead (ament_cmake_python).
"""
from setuptools import find_packages, setup

setup(
    name="selfpose",
    version="0.1.0",
    description="Self-supervised 6D object pose estimation for mobile robots (ROS 2 + plain Python)",
    python_requires=">=3.10",
    packages=find_packages(include=["selfpose_core", "selfpose_core.*", "selfpose_ros", "selfpose_ros.*"]),
    data_files=[("share/selfpose_ros/msg", ["msg/ObjectPose.msg", "msg/ObjectPoseArray.msg"]),
                ("share/selfpose_ros/action", ["action/Adapt.action"])],
    install_requires=[
        # torch is installed first by the Makefile (pip install torch==2.13.0 takes the local CPU build).
        "torch>=2.1",
        "numpy>=1.26",
        "scipy>=1.11",
        "opencv-python-headless>=4.8",
        "open3d-cpu>=0.18; platform_machine=='x86_64'",
        "trimesh>=4.0",
        "kornia>=0.7",
        "rosbags>=0.11.7",
        "rosbags-image>=0.10.4",  # sensor_msgs image encodings (Bayer, YUV, 16-bit colour)
        "catkin_pkg>=1.0",
        "pyyaml>=6.0",
        "tqdm>=4.66",
        "matplotlib>=3.7",
        "pillow>=9.0",
    ],
    extras_require={"test": ["pytest>=7.4", "hypothesis>=6.100", "import-linter>=2.1"]},
    entry_points={
        "console_scripts": [
            "selfpose = selfpose_core.cli.main:main",
            "selfpose-estimator = selfpose_ros.estimator_node:main",
            "selfpose-collect-sequence = selfpose_ros.collect_node:main",
            "selfpose-adapt = selfpose_ros.adapt:main",
            "selfpose-adapt-server = selfpose_ros.adapt_server_node:main",
        ],
    },
)
