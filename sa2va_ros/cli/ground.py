"""``sa2va-ground``: ground a phrase on one image and save the mask and an overlay as PNG files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from sa2va_ros.cli.common import load_model
from sa2va_ros.label_mask import overlay


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sa2va-ground", description=__doc__)
    parser.add_argument("--model", help="checkpoint directory (project or official format); default: bundled")
    parser.add_argument("--image", help="RGB image file; default: a synthetic tabletop scene with a blue mug")
    parser.add_argument("--text", default="pick the blue mug", help="the phrase or command to ground")
    parser.add_argument("--out", default="out", help="output directory")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic scene")
    args = parser.parse_args(argv)

    from sa2va_ros.model import CheckpointError

    if args.image:
        image = np.asarray(Image.open(args.image).convert("RGB"))
    else:
        from sa2va_ros.synthetic import sample_referring_image

        image = sample_referring_image(args.seed, split="test", size=(240, 320), target=("blue", "mug")).image
    try:
        model = load_model(args.model, args.device, "sa2va-ground")
    except (CheckpointError, ValueError) as exc:
        print(f"sa2va-ground: {exc}", file=sys.stderr)
        return 1
    prompt = f"<image>\nPlease segment {args.text} in this image." if "<image>" not in args.text else args.text
    result = model.ground([image], prompt)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    masks = result.masks[:, 0]  # [N, H, W]
    union = masks.any(axis=0) if len(masks) else np.zeros(image.shape[:2], dtype=bool)
    Image.fromarray(image).save(out / "image.png")
    Image.fromarray((union * 255).astype(np.uint8)).save(out / "mask.png")
    Image.fromarray(overlay(image, masks)).save(out / "overlay.png")
    summary = {"text": args.text, "answer": result.text, "targets": len(masks), "scores": result.scores.tolist()}
    (out / "result.json").write_text(json.dumps(summary, indent=2))
    print(f"answer: {result.text!r}; {len(masks)} mask(s); wrote {out}/mask.png and {out}/overlay.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
