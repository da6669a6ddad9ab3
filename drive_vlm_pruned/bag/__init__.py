"""
rosbag2 tools: synthetic and nuScenes bags with ground truth, and replay over rclpy.

``topics`` is the contract (topic names, frames, the ground-truth sidecar); ``synth`` and
``nuscenes`` write bags with the pure-Python ``rosbags`` library (no ROS needed); ``play``
publishes a bag's raw CDR bytes over rclpy, imported only when a bag is played.
"""
