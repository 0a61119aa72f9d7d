"""Entry point shared by the camera nodes: a node that runs its own blocking loop."""

from __future__ import annotations

from collections.abc import Callable
import sys
from typing import Any

import rclpy
from rclpy.executors import ExternalShutdownException


def run_blocking_node(make_node: Callable[[], Any], args: list[str] | None = None) -> int:
    """
    Init rclpy, build the node, call its ``run()`` until it returns or Ctrl-C / an external
    shutdown, then destroy it and shut rclpy down.
    """
    rclpy.init(args=args if args is not None else sys.argv)
    node = None
    try:
        node = make_node()
        node.run()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
