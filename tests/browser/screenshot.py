"""Make the README's screenshot of the web page: a live stack on the shipped weights, one EBM job and
one diffusion job submitted through the page, then a picture of the finished diffusion job.

    .venv/bin/python -m tests.browser.screenshot docs/web-page.png
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

from PIL import Image

from tests.browser.driver import IMAGES_LOADED, chromium, fill, job_status, missing, submit, text
from tests.integration.stack import ROOT, Stack, wait_until


def save_small(png: bytes, path: Path) -> None:
    """A 256-colour PNG: a third of the size, no visible difference for a page like this."""
    Image.open(io.BytesIO(png)).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", default=ROOT / "docs" / "web-page.png")
    parser.add_argument("--width", type=int, default=1100)
    args = parser.parse_args(argv)
    reason = missing()
    if reason:
        parser.error(reason)
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp))
        stack.env.update(GENSERVICE_DIFFUSION_WEIGHTS=str(ROOT / "models" / "diffusion"),
                         GENSERVICE_EBM_WEIGHTS=str(ROOT / "models" / "ebm"))  # fmt: skip
        browser = chromium(Path(tmp) / "profile", width=args.width, height=1400)
        try:
            stack.start()
            browser.get(stack.url + "/")
            wait_until(lambda: "worker" in text(browser, "service"), 30, "the page")
            fill(browser, "ebm", class_label="ship", num_images=8, seed=3, previews=6)
            submit(browser)
            wait_until(lambda: job_status(browser) == "finished", 300, "the EBM job")
            fill(browser, "diffusion", class_label="", num_images=16, sampler="ddim", steps=50, guidance=2, seed=1,
                 previews=8)  # fmt: skip
            submit(browser)
            wait_until(lambda: job_status(browser) == "finished", 600, "the diffusion job")
            wait_until(lambda: browser.execute_script(IMAGES_LOADED, "#results img", 16), 30, "the images")
            height = browser.execute_script("return document.documentElement.scrollHeight")
            browser.execute_cdp_cmd(  # the whole page in one picture: a viewport as tall as the page
                "Emulation.setDeviceMetricsOverride",
                {"width": args.width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            )
            args.out.parent.mkdir(parents=True, exist_ok=True)
            save_small(browser.get_screenshot_as_png(), args.out)
        finally:
            browser.quit()
            stack.close()
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
