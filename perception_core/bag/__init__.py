"""rosbag2 front end: sample recordings with ground truth and offline evaluation (`mobius bag`)."""
