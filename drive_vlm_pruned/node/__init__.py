"""The ROS 2 node: six synchronized cameras in, answers, results and trajectories out."""
