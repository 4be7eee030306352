"""Read annotation pickles (refer's ``refs(*).p``, Ref-DAVIS17's ``mask_dict.pkl``) without running code.

Pickles can name any importable callable (``os.system`` included), so these readers admit only the
opcodes that build plain data -- dicts, lists, tuples, sets, str, bytes, numbers, bools, None -- and refuse
every global lookup. ``convert_pickle_to_json`` writes the same data as JSON once, which the dataset
readers then prefer.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any


class PlainDataUnpickler(pickle.Unpickler):
    """Unpickler that refuses to import anything: only built-in containers and scalars load."""

    def find_class(self, module: str, name: str) -> Any:
        """Refuses every global (classes, functions), which is what makes untrusted pickles safe here."""
        raise pickle.UnpicklingError(
            f"refusing to load global '{module}.{name}': annotation pickles may hold only plain "
            "containers and scalars (dict, list, tuple, str, bytes, numbers, None)"
        )


def load_plain_pickle(path: str | Path) -> Any:
    """Loads a pickle of plain data; Python 2 ``str`` objects (refer's pickles) are decoded as UTF-8."""
    with open(path, "rb") as file:
        try:
            return PlainDataUnpickler(file, encoding="utf-8").load()
        except pickle.UnpicklingError as error:
            raise pickle.UnpicklingError(f"{path}: {error}") from error


def _to_json_compatible(value: Any) -> Any:
    """Plain pickled data as JSON data: bytes (RLE counts) -> ASCII str, tuples and sets -> lists."""
    if isinstance(value, dict):
        return {key: _to_json_compatible(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json_compatible(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return sorted(_to_json_compatible(item) for item in value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("ascii")
    return value


def convert_pickle_to_json(pickle_path: str | Path, json_path: str | Path | None = None) -> Path:
    """Writes a plain-data pickle as JSON (default: same name, ``.json`` suffix) and returns that path."""
    pickle_path = Path(pickle_path)
    target = Path(json_path) if json_path is not None else pickle_path.with_suffix(".json")
    data = _to_json_compatible(load_plain_pickle(pickle_path))
    with open(target, "w", encoding="utf-8") as file:
        json.dump(data, file)
    return target
