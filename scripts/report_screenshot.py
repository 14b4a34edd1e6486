"""The screenshot of docs/reports.md of a `miner report` page: headless Chromium, then a 256-colour PNG \
(small enough to commit).

    .venv/bin/miner demo out/demo
    .venv/bin/python scripts/report_screenshot.py out/demo/report/findings/pneumothorax.html docs/report.png

The palette keeps the CLEAR legend's hues exact (they are what a reader matches the pictures against); the rest
of the page is median-cut to the remaining colours, without dithering.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path, help="an HTML page of a report")
    parser.add_argument("png", type=Path, help="the PNG to write")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1180)
    parser.add_argument("--findings", type=int, default=8, help="classes of the model (the legend's hues)")
    args = parser.parse_args()

    from PIL import Image

    from miner.clear import finding_hues, hue_colour

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium is not installed (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        shot = Path(tmp) / "shot.png"
        subprocess.run([chromium, *FLAGS, f"--user-data-dir={tmp}/profile", f"--screenshot={shot}",
                        f"--window-size={args.width},{args.height}", args.page.resolve().as_uri()],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        image = Image.open(shot).convert("RGB")
    exact = [tuple(reversed(hue_colour(h))) for h in finding_hues(args.findings)]
    exact += [(255, 255, 255), (0, 0, 0), (44, 160, 44), (214, 39, 40), (0, 200, 0), (255, 0, 0)]
    base = image.quantize(colors=256 - len(exact), method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    palette = base.getpalette()[: 3 * (256 - len(exact))] + [v for colour in exact for v in colour]
    holder = Image.new("P", (1, 1))
    holder.putpalette(palette)
    args.png.parent.mkdir(parents=True, exist_ok=True)
    image.quantize(palette=holder, dither=Image.Dither.NONE).save(args.png, optimize=True)
    print(f"{args.png}: {image.size[0]}x{image.size[1]}, {args.png.stat().st_size / 1e3:.0f} KB")


if __name__ == "__main__":
    main()
