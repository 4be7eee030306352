"""Fixtures shared by several test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ros_context(request: pytest.FixtureRequest) -> Iterator[object]:
    """An rclpy context of its own on the module's ``ROS_DOMAIN_ID`` (the module sets the DDS env first)."""
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context, domain_id=request.module.ROS_DOMAIN_ID)
    yield context
    rclpy.shutdown(context=context)
