"""The README's screenshots stay true: scripts/screenshots.py runs from the demo in Chromium and
writes the three pictures (feeds, a file's invalid records, the playground's diff)."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="Debian's chromium is not installed")


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def test_the_screenshot_script_photographs_the_three_pages_of_the_demo(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "screenshots.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == ["console-feeds.png", "console-file.png", "console-playground.png"]
    for name in names:
        width, height = png_size(tmp_path / name)
        assert width >= 1400 and height >= 900, (name, width, height)  # the viewport, or the page if wider
    assert f"wrote {tmp_path / 'console-playground.png'}" in done.stderr
