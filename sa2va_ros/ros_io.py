"""ROS-side conversions of the sa2va_ros node: images <-> numpy, label masks, headers, QoS profiles.

Decoding accepts rclpy messages and rosbags' message objects alike, so the live node and the rosbag
replay share one decoder. Importing this module does not import rclpy (the ROS-free replay evaluation
uses ``decode_image``); rclpy and the message packages are imported by the functions that build ROS
objects. Every malformed image raises ``ImageDecodeError`` with a stable ``kind`` from
``IMAGE_ERROR_KINDS``, so a node can count each kind and report it once.
"""

from __future__ import annotations

import array
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import cv2
import numpy as np
from PIL import Image as PILImage
from rosbags.image import image_to_cvimage

from sa2va_ros.targets_schema import NANOSECONDS_PER_SECOND, split_stamp_ns

if TYPE_CHECKING:
    from rclpy.node import Node
    from rclpy.qos import QoSProfile
    from rclpy.subscription import Subscription
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

ImageErrorKind = Literal[
    "empty", "unsupported_encoding", "size_mismatch", "truncated", "too_large", "corrupt_compressed"
]
IMAGE_ERROR_KINDS: tuple[ImageErrorKind, ...] = (
    "empty",  # width or height 0, or no compressed bytes
    "unsupported_encoding",  # raw encoding or compressed format this node does not read
    "size_mismatch",  # step shorter than a row of pixels, or more data than step * height
    "truncated",  # less data than step * height, or compressed bytes cut before their end marker
    "too_large",  # more pixels than the configured limit
    "corrupt_compressed",  # compressed bytes that are not a decodable JPEG or PNG
)
DEFAULT_MAX_PIXELS = 7680 * 4320  # 8K UHD; anything bigger is refused as "too_large"

# raw encoding -> (channels, bytes per channel)
RAW_IMAGE_ENCODINGS: dict[str, tuple[int, int]] = {
    "rgb8": (3, 1),
    "bgr8": (3, 1),
    "rgba8": (4, 1),
    "bgra8": (4, 1),
    "mono8": (1, 1),
    "mono16": (1, 2),  # scaled to 8 bit (value * 255 / 65535) when decoded as a camera image
}
LABEL_MASK_ENCODINGS = ("mono8", "mono16")
COMPRESSED_FORMATS = ("JPEG", "PNG")
_COMPRESSED_SIGNATURES = {"JPEG": b"\xff\xd8\xff", "PNG": b"\x89PNG\r\n\x1a\n"}
_COMPRESSED_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}  # trailing zero bytes tolerated


class ImageDecodeError(ValueError):
    """A camera or mask message that cannot be decoded; ``kind`` is one of IMAGE_ERROR_KINDS."""

    def __init__(self, kind: ImageErrorKind, message: str) -> None:
        if kind not in IMAGE_ERROR_KINDS:
            raise ValueError(f"unknown image error kind {kind!r}")
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class _PackedImage:
    """The fields of sensor_msgs/Image that rosbags-image reads, with row padding removed."""

    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: np.ndarray  # height * step bytes, uint8


def decode_image(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode sensor_msgs/Image or CompressedImage (rclpy or rosbags object) to an H×W×3 uint8 RGB array.

    The array owns its memory (never a view into the message). Raises ImageDecodeError.
    """
    if hasattr(msg, "format"):  # CompressedImage, the same test rosbags-image uses
        return _decode_compressed(msg, max_pixels)
    packed = _packed_raw_image(msg, RAW_IMAGE_ENCODINGS, max_pixels)
    rgb = image_to_cvimage(packed, "rgb8")  # H×W×3 uint8; byte order and colour order handled by rosbags
    return _owned(rgb)


def decode_label_mask(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a mono8 / mono16 label image to H×W uint8 / uint16 ids, exactly. Raises ImageDecodeError."""
    packed = _packed_raw_image(
        msg, {name: RAW_IMAGE_ENCODINGS[name] for name in LABEL_MASK_ENCODINGS}, max_pixels
    )
    return _owned(image_to_cvimage(packed))  # H×W, native byte order


def _owned(image: np.ndarray) -> np.ndarray:
    if image.flags.owndata and image.flags.writeable and image.flags.c_contiguous:
        return image
    return np.array(image, order="C")


def _packed_raw_image(msg: Any, encodings: dict[str, tuple[int, int]], max_pixels: int) -> Any:
    """Validate a raw Image against its own size fields; return it, or a copy without row padding."""
    height, width, step, encoding = int(msg.height), int(msg.width), int(msg.step), str(msg.encoding)
    data_size = len(msg.data)
    if height == 0 or width == 0:
        raise ImageDecodeError(
            "empty", f"image is {width}x{height} pixels ({encoding or 'no encoding'}, {data_size} bytes)"
        )
    if encoding not in encodings:
        raise ImageDecodeError(
            "unsupported_encoding",
            f"encoding {encoding!r} is not supported; expected one of {', '.join(encodings)}",
        )
    if height * width > max_pixels:
        raise ImageDecodeError(
            "too_large", f"image is {width}x{height} = {width * height} pixels, the limit is {max_pixels}"
        )
    channels, channel_bytes = encodings[encoding]
    row_bytes = width * channels * channel_bytes
    if step < row_bytes:
        raise ImageDecodeError(
            "size_mismatch",
            f"step {step} is shorter than a row: width {width} x {channels * channel_bytes} bytes "
            f"({encoding}) = {row_bytes}",
        )
    expected_size = step * height
    if data_size != expected_size:
        raise ImageDecodeError(
            "truncated" if data_size < expected_size else "size_mismatch",
            f"data has {data_size} bytes, expected step {step} x height {height} = {expected_size} "
            f"({width}x{height} {encoding})",
        )
    if step == row_bytes:
        return msg
    rows = np.frombuffer(msg.data, dtype=np.uint8).reshape(height, step)[:, :row_bytes]  # H×row_bytes
    return _PackedImage(height, width, encoding, int(msg.is_bigendian), row_bytes, np.ascontiguousarray(rows))


def _decode_compressed(msg: Any, max_pixels: int) -> np.ndarray:
    """JPEG/PNG -> H×W×3 RGB; the size is read from the header before decoding (no decompression bombs)."""
    data = np.frombuffer(msg.data, dtype=np.uint8)
    declared = str(msg.format)
    if data.size == 0:
        raise ImageDecodeError("empty", f"compressed image ({declared!r}) has no data")
    if "compresseddepth" in declared.lower():
        raise ImageDecodeError(
            "unsupported_encoding",
            f"format {declared!r} is a depth image; expected a JPEG or PNG camera image",
        )
    encoded = data.tobytes()
    signature_format = next(
        (name for name, signature in _COMPRESSED_SIGNATURES.items() if encoded.startswith(signature)), None
    )
    if signature_format and not encoded.rstrip(b"\x00").endswith(_COMPRESSED_END_MARKERS[signature_format]):
        raise ImageDecodeError(
            "truncated", f"{signature_format} image ({data.size} bytes) is cut before its end marker"
        )
    try:
        with PILImage.open(io.BytesIO(encoded)) as probe:  # reads the header only
            image_format, (width, height) = probe.format, probe.size
    except PILImage.DecompressionBombError as error:
        raise ImageDecodeError("too_large", f"compressed image ({declared!r}): {error}") from error
    except (PILImage.UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageDecodeError(
            "corrupt_compressed",
            f"{data.size} bytes declared {declared!r} are not a readable image "
            f"(first bytes {encoded[:8].hex()})",
        ) from error
    if image_format not in COMPRESSED_FORMATS:
        raise ImageDecodeError(
            "unsupported_encoding",
            f"compressed format {image_format} ({declared!r}) is not supported; "
            f"expected {' or '.join(COMPRESSED_FORMATS)}",
        )
    if width * height > max_pixels:
        raise ImageDecodeError(
            "too_large",
            f"{image_format} image is {width}x{height} = {width * height} pixels, the limit is {max_pixels}",
        )
    # EXIF orientation is ignored: pixels stay aligned with the sensor (and with depth from the same camera)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)  # H×W×3 uint8 BGR, or None
    if bgr is None or bgr.shape[:2] != (height, width):
        raise ImageDecodeError(
            "corrupt_compressed",
            f"{image_format} image {width}x{height} ({data.size} bytes) failed to decode",
        )
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def encode_label_mask(labels: np.ndarray, header: Any, encoding: str = "mono8") -> Image:
    """Build a mono8 / mono16 sensor_msgs/Image from H×W integer target ids, header copied unchanged.

    Refuses ids that do not fit the encoding (use mono16 for ids above 255).
    """
    if encoding not in LABEL_MASK_ENCODINGS:
        raise ValueError(f"label mask encoding {encoding!r} is not one of {', '.join(LABEL_MASK_ENCODINGS)}")
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"label image must be a 2-D integer array, got {labels.dtype} {labels.shape}")
    wire_dtype = np.dtype("<u1" if encoding == "mono8" else "<u2")  # mono16 is sent little-endian
    id_limit = int(np.iinfo(wire_dtype).max)
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) > id_limit):
        raise ValueError(
            f"label ids span {int(labels.min())}..{int(labels.max())}, {encoding} holds 0..{id_limit}"
            + ("; publish with encoding mono16" if encoding == "mono8" else "")
        )
    return _raw_image_message(labels.astype(wire_dtype, copy=False), header, encoding)


def encode_rgb(image: np.ndarray, header: Any) -> Image:
    """Build an rgb8 sensor_msgs/Image (the overlay) from an H×W×3 uint8 array, header copied unchanged."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"rgb8 image must be an H×W×3 uint8 array, got {image.dtype} {image.shape}")
    return _raw_image_message(image, header, "rgb8")


def _raw_image_message(pixels: np.ndarray, header: Any, encoding: str) -> Image:
    from sensor_msgs.msg import Image

    pixels = np.ascontiguousarray(pixels)  # H×W or H×W×C, tightly packed rows
    data = array.array("B")
    data.frombytes(pixels.tobytes())  # array.array skips rclpy's per-element check of the data field
    height, width = pixels.shape[:2]
    return Image(
        header=copy_header(header),
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=False,
        step=width * pixels.itemsize * (pixels.shape[2] if pixels.ndim == 3 else 1),
        data=data,
    )


def copy_header(header: Any) -> Header:
    """An rclpy std_msgs/Header equal to ``header`` (rclpy or rosbags object): same stamp and frame_id."""
    from builtin_interfaces.msg import Time
    from std_msgs.msg import Header

    return Header(
        stamp=Time(sec=int(header.stamp.sec), nanosec=int(header.stamp.nanosec)), frame_id=header.frame_id
    )


def header_from_stamp(stamp_ns: int, frame_id: str) -> Header:
    """An rclpy std_msgs/Header from integer nanoseconds and a frame id."""
    from builtin_interfaces.msg import Time
    from std_msgs.msg import Header

    sec, nanosec = split_stamp_ns(stamp_ns)
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id)


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (rclpy or rosbags) -> integer nanoseconds, to compare stamps exactly."""
    return int(stamp.sec) * NANOSECONDS_PER_SECOND + int(stamp.nanosec)


class QoSSettings(NamedTuple):
    """Validated QoS parameters, ROS-free so configuration can be checked without rclpy."""

    reliability: str
    durability: str
    history_depth: int


RELIABILITY_CHOICES = ("best_effort", "reliable")
DURABILITY_CHOICES = ("volatile", "transient_local")
QOS_PRESETS: dict[str, QoSSettings] = {
    "sensor_data": QoSSettings("best_effort", "volatile", 1),  # camera input, overlay: latest frame wins
    "reliable": QoSSettings("reliable", "volatile", 10),  # command, targets, answer (masks: depth 5)
}


def validate_qos_params(reliability: str, durability: str, history_depth: int) -> QoSSettings:
    """Check QoS parameter values; raises ValueError listing the allowed values."""
    if reliability not in RELIABILITY_CHOICES:
        raise ValueError(f"QoS reliability {reliability!r} is not one of: {', '.join(RELIABILITY_CHOICES)}")
    if durability not in DURABILITY_CHOICES:
        raise ValueError(f"QoS durability {durability!r} is not one of: {', '.join(DURABILITY_CHOICES)}")
    if isinstance(history_depth, bool) or not isinstance(history_depth, int) or history_depth < 1:
        raise ValueError(f"QoS history depth must be an integer >= 1 (keep last N), got {history_depth!r}")
    return QoSSettings(reliability, durability, history_depth)


def qos_profile_from_params(reliability: str, durability: str, history_depth: int) -> QoSProfile:
    """rclpy QoSProfile (keep last ``history_depth``) from parameter strings; ValueError on bad values."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    settings = validate_qos_params(reliability, durability, history_depth)
    return QoSProfile(
        reliability=ReliabilityPolicy[settings.reliability.upper()],
        durability=DurabilityPolicy[settings.durability.upper()],
        history=HistoryPolicy.KEEP_LAST,
        depth=settings.history_depth,
    )


def qos_profile_from_preset(name: str, history_depth: int | None = None) -> QoSProfile:
    """rclpy QoSProfile for a named preset of QOS_PRESETS, optionally with another history depth."""
    if name not in QOS_PRESETS:
        raise ValueError(f"QoS preset {name!r} is not one of: {', '.join(QOS_PRESETS)}")
    preset = QOS_PRESETS[name]
    return qos_profile_from_params(
        preset.reliability,
        preset.durability,
        preset.history_depth if history_depth is None else history_depth,
    )


def subscription_problems(node: Node, subscription: Subscription) -> list[str]:
    """Why a subscription may receive nothing: no publisher, a publisher of another type, incompatible QoS.

    One line per problem, for the warning a node logs when its input stays silent; [] when none is seen.
    """
    from rclpy.qos import QoSCompatibility, qos_check_compatible

    topic = subscription.topic_name
    msg_type = subscription.msg_type
    expected_type = f"{msg_type.__module__.split('.')[0]}/msg/{msg_type.__name__}"
    publishers = node.get_publishers_info_by_topic(topic)
    if not publishers:
        return [f"no publisher on {topic} (is the source running, and the topic remapped?)"]
    problems = []
    for info in publishers:
        who = f"publisher {info.node_namespace.rstrip('/')}/{info.node_name} on {topic}"
        if info.topic_type != expected_type:
            problems.append(f"{who} sends {info.topic_type}, this subscription expects {expected_type}")
            continue
        compatibility, reason = qos_check_compatible(info.qos_profile, subscription.qos_profile)
        if compatibility == QoSCompatibility.ERROR:  # WARNING only means a policy is left to system default
            problems.append(f"{who} has incompatible QoS: {reason}")
    return problems
