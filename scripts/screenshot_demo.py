"""
Screenshot the Gradio demo as a browser shows it: start `diffusers_agdm/demo/app.py` on the embedded default with a
worked example (a real MNIST test digit, attacked before the app starts), open it in headless Chromium (Debian's
`chromium`), save the page as a PNG and check that it rendered (not blank, the result image drawn).

    python scripts/screenshot_demo.py --output docs/images/agdm-demo.png

Needs `pip install 'diffusers-agdm[demo,data]'` and `apt-get install chromium`.
"""

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="docs/images/agdm-demo.png", help="where the screenshot goes")
    parser.add_argument("--window_size", default="1280,1500", help="the browser window, width,height")
    parser.add_argument("--attack_steps", type=int, default=5, help="PGD steps of the worked example")
    parser.add_argument("--wait_ms", type=int, default=20000, help="virtual time the page gets to render")
    parser.add_argument("--browser", default=shutil.which("chromium") or shutil.which("chromium-browser"),
                        help="the Chromium binary")
    return parser.parse_args(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_rendered(path: Path) -> None:
    """The page is not blank and holds the result picture (a large, mostly dark block of digits)."""
    image = np.asarray(Image.open(path).convert("L"), np.float32)
    if image.std() < 10:
        raise SystemExit(f"{path} looks blank (pixel std {image.std():.1f}).")
    dark_rows = (image < 40).mean(axis=1) > 0.15  # rows crossing the digit cells of the result picture
    if dark_rows.sum() < 200:
        raise SystemExit(f"{path} rendered, but the result picture is missing ({dark_rows.sum()} dark rows).")


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.browser is None:
        raise SystemExit("No chromium found: apt-get install -y chromium")
    from diffusers_agdm import load_pipeline
    from diffusers_agdm.demo.app import build_demo, example_images

    work = Path(tempfile.mkdtemp(prefix="agdm-screenshot-"))
    examples = example_images(work)
    if not examples:
        raise SystemExit("The worked example needs foolbox's MNIST images: pip install 'diffusers-agdm[data]'")
    start = time.time()
    demo = build_demo(load_pipeline(), steps=args.attack_steps, examples=examples, preview=examples[0])
    print(f"worked example attacked in {time.time() - start:.0f} s")
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        urllib.request.urlopen(url, timeout=30).read()
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        command = [args.browser, *CHROMIUM_FLAGS, f"--user-data-dir={work / 'profile'}",
                   f"--window-size={args.window_size}", f"--virtual-time-budget={args.wait_ms}",
                   f"--screenshot={output.resolve()}", url]
        done = subprocess.run(command, capture_output=True, text=True, timeout=180)
        if done.returncode != 0 or not output.is_file():
            raise SystemExit(f"chromium failed ({done.returncode}): {done.stderr[-2000:]}")
    finally:
        demo.close()
        shutil.rmtree(work, ignore_errors=True)
    check_rendered(output)
    print(f"screenshot: {output}")


if __name__ == "__main__":
    sys.exit(main())
