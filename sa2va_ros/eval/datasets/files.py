"""Small file readers shared by the dataset readers: RGB frames and JSON-or-pickle annotation files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from sa2va_ros.eval.datasets.safe_pickle import load_plain_pickle


def read_rgb_image(path: str | Path) -> np.ndarray:
    """Reads an image file as RGB uint8 [H, W, 3]; FileNotFoundError when it is missing or unreadable."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image from its header, without decoding the pixels."""
    with Image.open(path) as image:
        width, height = image.size
    return height, width


def read_json(path: str | Path) -> Any:
    """Parses a UTF-8 JSON file."""
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def json_or_pickle(pickle_path: Path) -> Path:
    """The ``.json`` twin of an annotation pickle when one was written (see convert_pickle_to_json)."""
    json_path = pickle_path.with_suffix(".json")
    return json_path if json_path.is_file() else pickle_path


def read_annotation_file(path: str | Path) -> Any:
    """Reads a JSON file, or a pickle through the restricted plain-data unpickler."""
    path = Path(path)
    return read_json(path) if path.suffix == ".json" else load_plain_pickle(path)
