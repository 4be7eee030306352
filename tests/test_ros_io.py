"""ros_io: image decoding (rclpy and rosbags messages), label masks, headers and QoS, over real Fast DDS.

DDS stays on loopback in its own domain; the environment is set before rclpy is imported.
"""

from __future__ import annotations

import os

ROS_DOMAIN_ID = 41
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_DOMAIN_ID"] = str(ROS_DOMAIN_ID)
os.environ["RMW_IMPLEMENTATION"] = "rmw_fastrtps_cpp"

import array  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402
from collections.abc import Callable  # noqa: E402
from types import SimpleNamespace  # noqa: E402
from typing import Any  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from builtin_interfaces.msg import Time  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import DurabilityPolicy, HistoryPolicy, ReliabilityPolicy  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from sa2va_ros.label_mask import label_image_from_masks  # noqa: E402
from sa2va_ros.ros_io import (  # noqa: E402
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    copy_header,
    decode_image,
    decode_label_mask,
    encode_label_mask,
    encode_rgb,
    header_from_stamp,
    qos_profile_from_params,
    qos_profile_from_preset,
    stamp_to_ns,
    subscription_problems,
    validate_qos_params,
)

SPIN_TIMEOUT_S = 5.0
ROSBAGS = get_typestore(Stores.ROS2_KILTED)


# ---------------------------------------------------------------- test data


def random_rgb(height: int = 5, width: int = 7, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def smooth_rgb(height: int = 16, width: int = 24) -> np.ndarray:
    """A gradient: JPEG keeps it within a few grey levels, unlike noise."""
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack(
        [cols * 255 // (width - 1), rows * 255 // (height - 1), np.full_like(rows, 128)], -1
    ).astype(np.uint8)


def raw_cases(rgb: np.ndarray) -> dict[str, tuple[str, np.ndarray, int, np.ndarray]]:
    """name -> (encoding, H×W×C or H×W pixels as sent, extra padding bytes per row, expected RGB)."""
    alpha = np.full((*rgb.shape[:2], 1), 200, dtype=np.uint8)
    gray = rgb[..., 1]
    return {
        "rgb8": ("rgb8", rgb, 0, rgb),
        "bgr8": ("bgr8", rgb[..., ::-1], 0, rgb),
        "rgba8": ("rgba8", np.concatenate([rgb, alpha], -1), 0, rgb),
        "bgra8": ("bgra8", np.concatenate([rgb[..., ::-1], alpha], -1), 0, rgb),
        "mono8": ("mono8", gray, 0, np.repeat(gray[..., None], 3, -1)),
        "rgb8_padded": ("rgb8", rgb, 5, rgb),
        "bgra8_padded": ("bgra8", np.concatenate([rgb[..., ::-1], alpha], -1), 3, rgb),
    }


def padded_bytes(pixels: np.ndarray, padding: int) -> tuple[bytes, int]:
    """Rows of ``pixels`` followed by ``padding`` garbage bytes each; returns (data, step)."""
    rows = np.ascontiguousarray(pixels).reshape(pixels.shape[0], -1).view(np.uint8)
    garbage = np.full((rows.shape[0], padding), 0xAB, dtype=np.uint8)
    padded = np.concatenate([rows, garbage], axis=1)
    return padded.tobytes(), padded.shape[1]


def rclpy_image(encoding: str, pixels: np.ndarray, padding: int = 0, frame_id: str = "camera") -> Image:
    data, step = padded_bytes(pixels, padding)
    return Image(
        header=Header(stamp=Time(sec=12, nanosec=345), frame_id=frame_id),
        height=pixels.shape[0],
        width=pixels.shape[1],
        encoding=encoding,
        is_bigendian=pixels.dtype.byteorder == ">",
        step=step,
        data=array.array("B", data),
    )


def rosbags_image(encoding: str, pixels: np.ndarray, padding: int = 0) -> Any:
    data, step = padded_bytes(pixels, padding)
    types = ROSBAGS.types
    header = types["std_msgs/msg/Header"](
        stamp=types["builtin_interfaces/msg/Time"](sec=12, nanosec=345), frame_id="camera"
    )
    return types["sensor_msgs/msg/Image"](
        header=header,
        height=pixels.shape[0],
        width=pixels.shape[1],
        encoding=encoding,
        is_bigendian=int(pixels.dtype.byteorder == ">"),
        step=step,
        data=np.frombuffer(data, dtype=np.uint8),
    )


def raw_message(**fields: Any) -> SimpleNamespace:
    """An Image-shaped object with arbitrary (possibly inconsistent) fields."""
    defaults = {"height": 2, "width": 3, "encoding": "rgb8", "is_bigendian": 0, "step": 9, "data": bytes(18)}
    return SimpleNamespace(**(defaults | fields))


def compressed(encoded: bytes, image_format: str = "jpeg") -> CompressedImage:
    return CompressedImage(
        header=Header(frame_id="camera"), format=image_format, data=array.array("B", encoded)
    )


def imencode(extension: str, rgb: np.ndarray, *params: int) -> bytes:
    ok, buffer = cv2.imencode(extension, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), list(params))
    assert ok
    return buffer.tobytes()


def png_claiming_size(width: int, height: int) -> bytes:
    """A valid 1×1 PNG whose IHDR is rewritten to claim ``width`` × ``height`` (CRC fixed)."""
    png = bytearray(imencode(".png", random_rgb(1, 1)))
    ihdr_start = 8 + 4 + 4  # signature, chunk length, chunk type
    png[ihdr_start : ihdr_start + 8] = struct.pack(">II", width, height)
    ihdr_data = bytes(png[ihdr_start : ihdr_start + 13])
    png[ihdr_start + 13 : ihdr_start + 17] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr_data))
    return bytes(png)


# ---------------------------------------------------------------- DDS round trip


def spin_until(
    executor: SingleThreadedExecutor, done: Callable[[], bool], action: Callable[[], None]
) -> None:
    """Repeat ``action`` every 0.2 s and spin until ``done()``; fails after SPIN_TIMEOUT_S, never hangs."""
    deadline = time.monotonic() + SPIN_TIMEOUT_S
    next_action = 0.0
    while not done():
        now = time.monotonic()
        if now > deadline:
            pytest.fail(f"nothing arrived over DDS within {SPIN_TIMEOUT_S} s")
        if now >= next_action:
            action()  # best-effort samples can be lost before discovery settles: send again
            next_action = now + 0.2
        executor.spin_once(timeout_sec=0.02)


def test_images_and_masks_travel_over_dds_and_decode(ros_context: Context) -> None:
    camera = Node("ros_io_test_camera", context=ros_context)
    consumer = Node("ros_io_test_consumer", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(camera)
    executor.add_node(consumer)
    inbox: dict[str, list] = {"image": [], "compressed": [], "masks": []}
    camera_qos = qos_profile_from_preset("sensor_data")
    mask_qos = qos_profile_from_preset("reliable", history_depth=5)
    try:
        image_pub = camera.create_publisher(Image, "camera/image", camera_qos)
        compressed_pub = camera.create_publisher(CompressedImage, "camera/image/compressed", camera_qos)
        mask_pub = consumer.create_publisher(Image, "masks", mask_qos)
        image_sub = consumer.create_subscription(Image, "camera/image", inbox["image"].append, camera_qos)
        consumer.create_subscription(
            CompressedImage, "camera/image/compressed", inbox["compressed"].append, camera_qos
        )
        camera.create_subscription(Image, "masks", inbox["masks"].append, mask_qos)

        def exchange(publisher: Any, msg: Any, box: str) -> Any:
            """Publish until the message tagged with msg's frame_id arrives; return the received copy."""
            tag = msg.header.frame_id

            def arrived() -> list:
                return [got for got in inbox[box] if got.header.frame_id == tag]

            spin_until(executor, lambda: bool(arrived()), lambda: publisher.publish(msg))
            return arrived()[0]

        for name, (encoding, pixels, padding, expected) in raw_cases(random_rgb()).items():
            received = exchange(image_pub, rclpy_image(encoding, pixels, padding, frame_id=name), "image")
            assert received.step == pixels.shape[1] * (pixels.shape[2] if pixels.ndim == 3 else 1) + padding
            np.testing.assert_array_equal(decode_image(received), expected, err_msg=name)

        smooth = smooth_rgb()
        png = compressed(imencode(".png", smooth), "rgb8; png compressed bgr8")
        png.header.frame_id = "png"
        np.testing.assert_array_equal(decode_image(exchange(compressed_pub, png, "compressed")), smooth)
        jpeg = compressed(
            imencode(".jpg", smooth, cv2.IMWRITE_JPEG_QUALITY, 95), "rgb8; jpeg compressed bgr8"
        )
        jpeg.header.frame_id = "jpeg"
        decoded_jpeg = decode_image(exchange(compressed_pub, jpeg, "compressed"))
        assert decoded_jpeg.shape == smooth.shape and decoded_jpeg.dtype == np.uint8
        assert np.abs(decoded_jpeg.astype(int) - smooth).mean() < 3.0

        # The mask of a received frame keeps that frame's header exactly, across DDS again.
        camera_frame = exchange(
            image_pub, rclpy_image("rgb8", random_rgb(6, 8), frame_id="camera_optical_frame"), "image"
        )
        camera_frame.header.stamp = Time(sec=1_700_000_000, nanosec=999_999_999)
        masks = {1: np.zeros((6, 8), dtype=bool), 300: np.zeros((6, 8), dtype=bool)}
        masks[1][:3, :5] = True
        masks[300][2:, 4:] = True
        labels = label_image_from_masks(masks, (6, 8), scores={1: 0.2, 300: 0.8})
        for encoding in ("mono8", "mono16"):
            sent_labels = labels if encoding == "mono16" else np.minimum(labels, 255)
            received_mask = exchange(
                mask_pub, encode_label_mask(sent_labels, camera_frame.header, encoding), "masks"
            )
            assert received_mask.header == camera_frame.header
            assert received_mask.encoding == encoding
            np.testing.assert_array_equal(decode_label_mask(received_mask), sent_labels)
            inbox["masks"].clear()

        # Compatible QoS is silent; a reliable reader of a best-effort camera and a topic nobody
        # publishes are both explained.
        assert subscription_problems(consumer, image_sub) == []
        strict_sub = consumer.create_subscription(
            Image, "camera/image", lambda _: None, qos_profile_from_preset("reliable")
        )
        lonely_sub = consumer.create_subscription(Image, "nobody/publishes/this", lambda _: None, camera_qos)
        problems = subscription_problems(consumer, strict_sub)
        assert len(problems) == 1
        assert "/ros_io_test_camera on /camera/image has incompatible QoS" in problems[0]
        assert "reliab" in problems[0].lower()
        assert subscription_problems(consumer, lonely_sub) == [
            "no publisher on /nobody/publishes/this (is the source running, and the topic remapped?)"
        ]
    finally:
        executor.shutdown()
        camera.destroy_node()
        consumer.destroy_node()


def test_subscription_problems_reports_a_publisher_of_another_type() -> None:
    publisher = SimpleNamespace(
        node_name="cam",
        node_namespace="/robot",
        topic_type="sensor_msgs/msg/CompressedImage",
        qos_profile=qos_profile_from_preset("sensor_data"),
    )
    node = SimpleNamespace(get_publishers_info_by_topic=lambda topic: [publisher])
    subscription = SimpleNamespace(
        topic_name="/robot/image", msg_type=Image, qos_profile=qos_profile_from_preset("sensor_data")
    )
    assert subscription_problems(node, subscription) == [
        "publisher /robot/cam on /robot/image sends sensor_msgs/msg/CompressedImage, "
        "this subscription expects sensor_msgs/msg/Image"
    ]


# ---------------------------------------------------------------- decoding without DDS


@pytest.mark.parametrize("case", list(raw_cases(random_rgb())))
@pytest.mark.parametrize("make_message", [rclpy_image, rosbags_image], ids=["rclpy", "rosbags"])
def test_raw_encodings_decode_from_rclpy_and_rosbags_messages(case: str, make_message: Callable) -> None:
    encoding, pixels, padding, expected = raw_cases(random_rgb())[case]
    decoded = decode_image(make_message(encoding, pixels, padding))
    assert decoded.dtype == np.uint8 and decoded.shape == expected.shape
    np.testing.assert_array_equal(decoded, expected)


def test_image_read_back_from_a_bag_serialisation_decodes() -> None:
    rgb = random_rgb(4, 6, seed=3)
    cdr = ROSBAGS.serialize_cdr(rosbags_image("bgr8", rgb[..., ::-1], padding=2), "sensor_msgs/msg/Image")
    np.testing.assert_array_equal(decode_image(ROSBAGS.deserialize_cdr(cdr, "sensor_msgs/msg/Image")), rgb)


def test_compressed_decodes_from_rosbags_messages() -> None:
    smooth = smooth_rgb()
    msg = ROSBAGS.types["sensor_msgs/msg/CompressedImage"](
        header=ROSBAGS.types["std_msgs/msg/Header"](
            stamp=ROSBAGS.types["builtin_interfaces/msg/Time"](sec=1, nanosec=2), frame_id="camera"
        ),
        format="png",
        data=np.frombuffer(imencode(".png", smooth), dtype=np.uint8),
    )
    np.testing.assert_array_equal(decode_image(msg), smooth)


def test_grayscale_and_alpha_compressed_images_become_rgb() -> None:
    gray = smooth_rgb()[..., 0]
    ok, encoded = cv2.imencode(".png", gray)
    assert ok
    np.testing.assert_array_equal(
        decode_image(compressed(encoded.tobytes(), "png")), np.repeat(gray[..., None], 3, -1)
    )
    rgba = np.concatenate([smooth_rgb(), np.full((16, 24, 1), 7, dtype=np.uint8)], -1)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    assert ok
    np.testing.assert_array_equal(decode_image(compressed(encoded.tobytes(), "png")), smooth_rgb())


def test_mono16_scales_to_8_bit_in_either_byte_order() -> None:
    levels = (np.arange(24) * 2851 % 65536).reshape(4, 6).astype(np.uint16)
    levels[0, :3] = (0, 65535, 257 * 200)
    expected = np.repeat((levels // 257).astype(np.uint8)[..., None], 3, -1)
    little = decode_image(rclpy_image("mono16", levels.astype("<u2"), padding=4))
    big = decode_image(rclpy_image("mono16", levels.astype(">u2"), padding=4))
    np.testing.assert_array_equal(little, expected)
    np.testing.assert_array_equal(big, expected)


def test_decoded_image_owns_its_memory() -> None:
    rgb = random_rgb()
    msg = rclpy_image("rgb8", rgb)
    decoded = decode_image(msg)
    decoded[:] = 0
    np.testing.assert_array_equal(np.frombuffer(msg.data, dtype=np.uint8).reshape(rgb.shape), rgb)


def assert_decode_error(msg: Any, kind: str, decoder: Callable = decode_image, **kwargs: Any) -> str:
    with pytest.raises(ImageDecodeError) as caught:
        decoder(msg, **kwargs)
    assert caught.value.kind == kind, str(caught.value)
    message = str(caught.value)
    assert message and "\n" not in message
    return message


@pytest.mark.parametrize(
    ("fields", "kind", "says"),
    [
        ({"width": 0}, "empty", "0x2"),
        ({"height": 0, "data": b""}, "empty", "3x0"),
        ({"encoding": "yuv422"}, "unsupported_encoding", "'yuv422'"),
        ({"encoding": "32FC1"}, "unsupported_encoding", "rgb8, bgr8"),
        ({"encoding": ""}, "unsupported_encoding", "''"),
        ({"step": 8, "data": bytes(16)}, "size_mismatch", "step 8 is shorter than a row"),
        ({"data": bytes(17)}, "truncated", "17 bytes, expected step 9 x height 2 = 18"),
        ({"data": b""}, "truncated", "0 bytes"),
        ({"data": bytes(19)}, "size_mismatch", "19 bytes"),
        ({"step": 10, "data": bytes(18)}, "truncated", "expected step 10 x height 2 = 20"),
        ({"encoding": "mono16", "step": 5, "data": bytes(10)}, "size_mismatch", "step 5"),
    ],
)
def test_malformed_raw_images_raise_one_error_kind(fields: dict, kind: str, says: str) -> None:
    assert says in assert_decode_error(raw_message(**fields), kind)


def test_default_message_is_empty() -> None:
    assert_decode_error(Image(), "empty")
    assert_decode_error(compressed(b""), "empty")


def test_size_limit_is_8k_by_default_and_configurable() -> None:
    assert DEFAULT_MAX_PIXELS == 7680 * 4320
    # checked before the data is looked at: an 8K frame passes the size check (and then misses data)
    assert_decode_error(raw_message(width=7680, height=4320, step=7680 * 3, data=b""), "truncated")
    assert_decode_error(raw_message(width=4320, height=7681, step=4320 * 3, data=b""), "too_large")
    assert decode_image(raw_message(), max_pixels=6).shape == (2, 3, 3)
    assert "6 pixels, the limit is 5" in assert_decode_error(raw_message(), "too_large", max_pixels=5)


def test_malformed_compressed_images_raise_one_error_kind() -> None:
    smooth = smooth_rgb()
    jpeg = imencode(".jpg", smooth)
    png = imencode(".png", smooth)
    assert "declared 'jpeg'" in assert_decode_error(compressed(bytes(range(200))), "corrupt_compressed")
    assert_decode_error(compressed(b"\xff\xd8\xff" + bytes(50) + b"\xff\xd9"), "corrupt_compressed")
    assert "end marker" in assert_decode_error(compressed(jpeg[: len(jpeg) // 2]), "truncated")
    assert_decode_error(compressed(png[:-20], "png"), "truncated")
    idat = png.index(b"IDAT") + 8
    broken_png = png[:idat] + bytes(b ^ 0x5A for b in png[idat : idat + 40]) + png[idat + 40 :]
    assert_decode_error(compressed(broken_png, "png"), "corrupt_compressed")
    assert_decode_error(compressed(imencode(".bmp", smooth), "bmp"), "unsupported_encoding")
    assert_decode_error(compressed(png, "16UC1; compressedDepth png"), "unsupported_encoding")
    assert_decode_error(compressed(png, "png"), "too_large", max_pixels=16 * 24 - 1)
    # the size comes from the header: a claimed 9000×9000 or 100000×100000 image is never decoded
    assert "9000x9000" in assert_decode_error(compressed(png_claiming_size(9000, 9000), "png"), "too_large")
    assert_decode_error(compressed(png_claiming_size(100_000, 100_000), "png"), "too_large")


def test_zero_padding_after_the_jpeg_end_marker_is_accepted() -> None:
    smooth = smooth_rgb()
    decoded = decode_image(compressed(imencode(".jpg", smooth, cv2.IMWRITE_JPEG_QUALITY, 95) + bytes(6)))
    assert np.abs(decoded.astype(int) - smooth).mean() < 3.0


def test_unknown_error_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown image error kind"):
        ImageDecodeError("bad_luck", "x")


# ---------------------------------------------------------------- encoding and headers


@pytest.mark.parametrize(
    ("encoding", "dtype", "top_id"), [("mono8", np.uint8, 255), ("mono16", np.uint16, 65535)]
)
def test_label_mask_round_trips_exactly_with_the_header_copied(
    encoding: str, dtype: type, top_id: int
) -> None:
    labels = np.random.default_rng(1).integers(0, top_id + 1, size=(5, 9)).astype(dtype)
    labels[0, 0] = top_id
    header = Header(stamp=Time(sec=-3, nanosec=7), frame_id="camera_optical_frame")
    msg = encode_label_mask(labels, header, encoding)
    assert msg.encoding == encoding and msg.height == 5 and msg.width == 9 and not msg.is_bigendian
    assert msg.step == 9 * np.dtype(dtype).itemsize
    assert msg.header == header and msg.header is not header
    decoded = decode_label_mask(msg)
    assert decoded.dtype == dtype
    np.testing.assert_array_equal(decoded, labels)
    header.frame_id = "changed later"
    assert msg.header.frame_id == "camera_optical_frame"


def test_label_mask_accepts_a_rosbags_header_and_wider_integer_arrays() -> None:
    header = ROSBAGS.types["std_msgs/msg/Header"](
        stamp=ROSBAGS.types["builtin_interfaces/msg/Time"](sec=5, nanosec=6), frame_id="bag_camera"
    )
    labels = np.array([[0, 1], [2, 3]], dtype=np.int64)
    msg = encode_label_mask(labels, header)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (5, 6, "bag_camera")
    np.testing.assert_array_equal(decode_label_mask(msg), labels)


@pytest.mark.parametrize(
    ("labels", "encoding", "message"),
    [
        (
            np.array([[0, 256]], dtype=np.uint16),
            "mono8",
            "0..256, mono8 holds 0..255; publish with encoding mono16",
        ),
        (np.array([[0, -1]], dtype=np.int32), "mono16", "mono16 holds 0..65535"),
        (np.array([[0, 70000]], dtype=np.int32), "mono16", "mono16 holds 0..65535"),
        (np.zeros((2, 2), dtype=np.float32), "mono8", "2-D integer"),
        (np.zeros((2, 2, 1), dtype=np.uint8), "mono8", "2-D integer"),
        (np.zeros((2, 2), dtype=np.uint8), "rgb8", "not one of mono8, mono16"),
    ],
)
def test_label_mask_encoding_refuses_what_does_not_fit(
    labels: np.ndarray, encoding: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        encode_label_mask(labels, Header(), encoding)


def test_decode_label_mask_refuses_colour_images() -> None:
    assert_decode_error(rclpy_image("rgb8", random_rgb()), "unsupported_encoding", decoder=decode_label_mask)


def test_rgb_overlay_round_trips_exactly() -> None:
    rgb = random_rgb(3, 11, seed=5)
    msg = encode_rgb(rgb, header_from_stamp(42, "overlay_frame"))
    assert (msg.encoding, msg.step, msg.header.frame_id) == ("rgb8", 33, "overlay_frame")
    np.testing.assert_array_equal(decode_image(msg), rgb)
    with pytest.raises(ValueError, match="H×W×3 uint8"):
        encode_rgb(rgb[..., :2], Header())


def test_stamps_convert_to_integer_nanoseconds_and_back() -> None:
    header = header_from_stamp(1_700_000_000_123_456_789, "camera")
    assert (header.stamp.sec, header.stamp.nanosec) == (1_700_000_000, 123_456_789)
    assert stamp_to_ns(header.stamp) == 1_700_000_000_123_456_789
    earlier = header_from_stamp(1_700_000_000_123_456_788, "camera")
    assert stamp_to_ns(earlier.stamp) < stamp_to_ns(header.stamp)  # a stamp going backwards is visible
    assert stamp_to_ns(header_from_stamp(-1, "camera").stamp) == -1
    bag_stamp = ROSBAGS.types["builtin_interfaces/msg/Time"](sec=2, nanosec=5)
    assert stamp_to_ns(bag_stamp) == 2_000_000_005
    assert copy_header(header) == header


# ---------------------------------------------------------------- QoS


def test_qos_presets_follow_the_design() -> None:
    camera = qos_profile_from_preset("sensor_data")
    assert camera.reliability == ReliabilityPolicy.BEST_EFFORT
    assert camera.durability == DurabilityPolicy.VOLATILE
    assert (camera.history, camera.depth) == (HistoryPolicy.KEEP_LAST, 1)
    command = qos_profile_from_preset("reliable")
    assert (command.reliability, command.depth) == (ReliabilityPolicy.RELIABLE, 10)
    assert qos_profile_from_preset("reliable", history_depth=5).depth == 5


def test_qos_from_params_maps_each_value() -> None:
    profile = qos_profile_from_params("reliable", "transient_local", 3)
    assert profile.reliability == ReliabilityPolicy.RELIABLE
    assert profile.durability == DurabilityPolicy.TRANSIENT_LOCAL
    assert (profile.history, profile.depth) == (HistoryPolicy.KEEP_LAST, 3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("RELIABLE", "volatile", 1), "reliability 'RELIABLE' is not one of: best_effort, reliable"),
        (("reliable", "durable", 1), "durability 'durable' is not one of: volatile, transient_local"),
        (("reliable", "volatile", 0), "history depth must be an integer >= 1"),
        (("reliable", "volatile", True), "history depth"),
        (("reliable", "volatile", 2.0), "history depth"),
    ],
)
def test_invalid_qos_values_list_the_allowed_ones(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_qos_params(*args)
    with pytest.raises(ValueError, match=message):
        qos_profile_from_params(*args)


def test_unknown_qos_preset_lists_the_presets() -> None:
    with pytest.raises(ValueError, match="'fast' is not one of: sensor_data, reliable"):
        qos_profile_from_preset("fast")


def test_decoding_does_not_import_rclpy() -> None:
    """The ROS-free replay evaluation decodes bag images through this module."""
    script = (
        "import sys\n"
        "from types import SimpleNamespace\n"
        "from sa2va_ros.ros_io import decode_image\n"
        "msg = SimpleNamespace(height=1, width=1, encoding='mono8', is_bigendian=0, step=1, data=b'\\x09')\n"
        "assert decode_image(msg).tolist() == [[[9, 9, 9]]]\n"
        "assert 'rclpy' not in sys.modules, 'rclpy was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
