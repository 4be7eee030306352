"""The typed result messages in msg/ parse with rosbags and hold the fields the targets JSON has."""

from __future__ import annotations

from pathlib import Path

from rosbags.typesys import Stores, get_types_from_msg, get_typestore

MSG_DIR = Path(__file__).resolve().parent.parent / "msg"


def test_messages_register_with_rosbags():
    types = {}
    for path in sorted(MSG_DIR.glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"sa2va_ros/msg/{path.stem}"))
    store = get_typestore(Stores.ROS2_KILTED)
    store.register(types)
    target = store.types["sa2va_ros/msg/Target"]
    fields = [f for f in target.__dataclass_fields__ if not f.startswith("__")]
    assert fields == ["id", "phrase", "state", "score", "has_mask", "bbox", "centroid", "area"]
    frame = store.types["sa2va_ros/msg/FrameResult"]
    assert {"header", "targets", "masks", "answers", "latency_ms"} <= set(frame.__dataclass_fields__)
