"""Image preprocessing of the LLM branch, as the official Sa2VA does it (InternVL dynamic tiling)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_pil(image: Image.Image | np.ndarray) -> Image.Image:
    """An RGB PIL image from a PIL image or an H×W×3 uint8 array (H×W mono is replicated)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 RGB image, got shape {array.shape}")
    return Image.fromarray(array, mode="RGB")


def candidate_grids(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """All (columns, rows) grids with min_tiles <= columns*rows <= max_tiles, by increasing tile count."""
    grids = {
        (cols, rows)
        for n in range(min_tiles, max_tiles + 1)
        for cols in range(1, n + 1)
        for rows in range(1, n + 1)
        if min_tiles <= cols * rows <= max_tiles
    }
    return sorted(grids, key=lambda grid: grid[0] * grid[1])


def closest_grid(
    width: int, height: int, grids: Sequence[tuple[int, int]], tile_size: int
) -> tuple[int, int]:
    """InternVL's choice: the grid whose aspect ratio is closest to the image's.

    On a tie the later (larger) grid wins only if the image has more than half of its pixels.
    """
    aspect = width / height
    best, best_diff = (1, 1), math.inf
    for cols, rows in grids:
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * tile_size * tile_size * cols * rows:
            best = (cols, rows)
    return best


def tile_grid(width: int, height: int, min_tiles: int, max_tiles: int, tile_size: int) -> tuple[int, int]:
    """The (columns, rows) grid ``dynamic_tiles`` cuts a ``width`` x ``height`` image into."""
    return closest_grid(width, height, candidate_grids(min_tiles, max_tiles), tile_size)


def dynamic_tiles(
    image: Image.Image,
    min_tiles: int = 1,
    max_tiles: int = 12,
    tile_size: int = 448,
    use_thumbnail: bool = True,
) -> list[Image.Image]:
    """Resize to the closest grid and cut into ``tile_size`` tiles; add a thumbnail when more than one tile."""
    cols, rows = tile_grid(image.width, image.height, min_tiles, max_tiles, tile_size)
    resized = image.resize((tile_size * cols, tile_size * rows))
    tiles = [
        resized.crop((c * tile_size, r * tile_size, (c + 1) * tile_size, (r + 1) * tile_size))
        for r in range(rows)
        for c in range(cols)
    ]
    if use_thumbnail and len(tiles) != 1:
        tiles.append(image.resize((tile_size, tile_size)))
    return tiles


def tiles_to_tensor(tiles: Sequence[Image.Image], tile_size: int) -> torch.Tensor:
    """PIL tiles -> ``[n, 3, tile, tile]``: bicubic resize, /255, ImageNet mean/std."""
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    out = []
    for tile in tiles:
        if tile.size != (tile_size, tile_size):
            tile = tile.resize((tile_size, tile_size), Image.BICUBIC)
        array = torch.from_numpy(np.array(tile, dtype=np.float32)).permute(2, 0, 1) / 255.0
        out.append((array - mean) / std)
    return torch.stack(out)


def pixel_shuffle(features: torch.Tensor, scale: float = 0.5, version: str = "v2") -> torch.Tensor:
    """InternVL's pixel shuffle: ``[n, w, h, c]`` -> ``[n, h*s, w*s, c/s²]`` (v2 swaps the axes back; v1 does not)."""
    n, w, h, c = features.shape
    x = features.reshape(n, w, int(h * scale), int(c / scale))
    x = x.permute(0, 2, 1, 3).reshape(n, int(h * scale), int(w * scale), int(c / (scale * scale)))
    if version == "v2":
        x = x.permute(0, 2, 1, 3)
    return x.contiguous()


def qwen_fetch_image(image: Image.Image, factor: int = 28) -> Image.Image:
    """What ``qwen_vl_utils.fetch_image`` does before the processor: resize to multiples of 28 (PIL bicubic)."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    height, width = smart_resize(
        image.height, image.width, factor=factor, min_pixels=4 * 28 * 28, max_pixels=16384 * 28 * 28
    )
    return image.resize((width, height))


def sam2_pixels(frame: np.ndarray, image_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """RGB uint8 ``H×W×3`` -> ``[3, S, S]`` float32 SAM-2 input: PIL bicubic resize to S (aspect not kept, as
    Sa2VA's ``DirectResize`` and Meta's JPEG loader do; a frame already at S×S is used as is), /255, ImageNet norm."""
    frame = np.asarray(frame, dtype=np.uint8)
    if frame.shape[:2] != (image_size, image_size):
        frame = np.array(Image.fromarray(frame).resize((image_size, image_size), Image.BICUBIC))
    pixels = torch.from_numpy(np.ascontiguousarray(frame)).to(device).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, device=device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=device)[:, None, None]
    return (pixels - mean) / std
