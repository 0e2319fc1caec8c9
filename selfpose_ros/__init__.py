"""selfpose ROS 2 nodes: thin rclpy shells over selfpose_core (rclpy is imported only by the node entry points)."""
