"""What several console scripts share: loading the model they run on."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sa2va_ros.model import Sa2VA


def load_model(path: str | None, device: str, prog: str) -> Sa2VA:
    """The given checkpoint; with none, the bundled model, or a random tiny one (and a notice) while none is bundled.

    Raises CheckpointError (or ValueError) for a path that is not a loadable checkpoint.
    """
    from sa2va_ros.model import Sa2VA
    from sa2va_ros.model.modeling import bundled_model_available

    if path is None and not bundled_model_available():
        from sa2va_ros.model.presets import tiny_model

        print(f"{prog}: no bundled model in this install; using a random tiny model (its masks mean nothing)")
        return tiny_model("internvl-qwen2").to(device).eval()
    return Sa2VA.from_pretrained(path, device=device)
