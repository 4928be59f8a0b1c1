"""Teardown shared by the tests that run the node as its own process (tests/test_ros_node.py,
tests/test_torch_free.py): the process gets SIGINT, as on Ctrl-C under ros2 launch, then the
test's rclpy client stops spinning and is destroyed."""
from __future__ import annotations

import signal
import subprocess
import threading


def stop_node_process(process: subprocess.Popen, executor, spinner: threading.Thread, client) -> str:
    """SIGINT to `process`, its whole output once it exits, and the client node torn down."""
    process.send_signal(signal.SIGINT)
    try:
        return process.communicate(timeout=30)[0]
    finally:
        executor.shutdown()
        spinner.join(5)
        client.destroy_node()
