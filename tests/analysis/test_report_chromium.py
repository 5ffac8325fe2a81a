"""Render the HTML report in headless Chromium: it must show its images, with no network."""

import base64
import io
import os
import re
import subprocess

import numpy as np
import pytest
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason="headless Chromium not installed at /usr/bin/chromium (Debian package 'chromium'; `make test` installs it)",
)


def _chromium(args, tmp_path, timeout=120):
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)


def test_report_renders_with_images(report_path, tmp_path):
    url = "file://" + os.path.abspath(report_path)
    shot = tmp_path / "shot.png"
    proc = _chromium([f"--screenshot={shot}", "--window-size=1200,2000", url], tmp_path)
    assert shot.exists(), proc.stderr.decode(errors="replace")[-2000:]
    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("L"), dtype=float)
    assert pixels.shape == (2000, 1200)
    assert pixels.std() > 10  # not blank: text, tables and figures
    assert (pixels < 128).mean() > 0.005  # some dark ink

    proc = _chromium(["--dump-dom", url], tmp_path)
    dom = proc.stdout.decode("utf-8", errors="replace")
    assert "<h1>SQS compression report</h1>" in dom, proc.stderr.decode(errors="replace")[-2000:]
    sources = re.findall(r'<img[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', dom)
    assert len(sources) >= 6
    for src in sources:
        with Image.open(io.BytesIO(base64.b64decode(src))) as im:
            im.load()
            assert im.size[0] > 100 and np.asarray(im.convert("L"), dtype=float).std() > 5
