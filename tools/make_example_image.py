"""Draw mobileclip2/data/example.jpg: a small, reproducible landscape for the zero-shot example.

Procedural on purpose (no photo licence, byte-identical output for a given Pillow): a sky
gradient, a sun, two hills, a house and a tree. Run ``python tools/make_example_image.py [OUT]``
to rewrite it; the result must stay under 50 KB (it ships in the wheel).
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 256
OUT = Path(__file__).resolve().parents[1] / "mobileclip2" / "data" / "example.jpg"


def draw() -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE))
    pixels = ImageDraw.Draw(image)
    for y in range(SIZE):  # sky: deep blue at the top to pale blue at the horizon
        t = y / SIZE
        pixels.line([(0, y), (SIZE, y)], fill=(int(70 + 120 * t), int(130 + 90 * t), int(220 + 30 * t)))
    pixels.ellipse((180, 24, 228, 72), fill=(255, 214, 64))  # sun
    pixels.ellipse((-80, 150, 180, 330), fill=(64, 150, 60))  # hills
    pixels.ellipse((90, 165, 360, 340), fill=(88, 170, 72))
    pixels.rectangle((40, 150, 100, 200), fill=(190, 60, 50))  # house
    pixels.polygon([(32, 152), (70, 118), (108, 152)], fill=(110, 60, 40))
    pixels.rectangle((62, 172, 78, 200), fill=(90, 50, 30))
    pixels.rectangle((196, 160, 206, 206), fill=(100, 70, 40))  # tree
    pixels.ellipse((176, 120, 226, 172), fill=(40, 120, 50))
    return image


def main(argv: list[str] | None = None) -> int:
    """Write the image to OUT, or to the path given as the only argument."""
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    draw().save(out, format="JPEG", quality=90, optimize=True)
    size = out.stat().st_size
    print(f"wrote {out} ({size} bytes)")
    return 0 if size < 50_000 else 1


if __name__ == "__main__":
    sys.exit(main())
