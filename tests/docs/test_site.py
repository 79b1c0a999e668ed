"""The built documentation site renders in a headless Chromium.

The site is built with ``mkdocs build --strict`` into a temporary folder and served by a local
``http.server``; Chromium takes screenshots of the front page and of one API page (a non-blank
PNG each) and dumps their DOM after the page's scripts ran, whose navigation must list the six
distributions. Skipped only where no Chromium binary exists (``apt-get install chromium``).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTIONS = [
    "danling-nestedtensor",
    "danling-meters",
    "danling-lrsched",
    "danling-runner-core",
    "danling-runner-deepspeed",
    "danling-runner-parallel",
]
CHROMIUM = next(
    (path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))), None
)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"]

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")


def mkdocs_command() -> list[str]:
    """mkdocs from this interpreter, or through uv with the workspace's ``docs`` dependency group."""
    if importlib.util.find_spec("mkdocs") is not None:
        return [sys.executable, "-m", "mkdocs"]
    uv = shutil.which("uv")
    if uv is None:
        raise RuntimeError("building the site needs mkdocs (`uv run --group docs ...`) or uv on PATH, found neither")
    return [uv, "run", "--locked", "--group", "docs", "mkdocs"]


def _outside_session_environment() -> dict[str, str]:
    """This process's environment without the variables that point uv at the running interpreter's env.

    Inside a nox session (``tests(torch='2.6')``) nox sets ``UV_PROJECT_ENVIRONMENT`` to the session's
    virtual environment: ``uv run --locked`` would then sync the locked torch into it, under the tests.
    """
    return {key: value for key, value in os.environ.items() if key not in ("UV_PROJECT_ENVIRONMENT", "VIRTUAL_ENV")}


@pytest.fixture(scope="module")
def site_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    site = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [*mkdocs_command(), "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**_outside_session_environment(), "NO_MKDOCS_2_WARNING": "1"},
    )
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.stdout}\n{build.stderr}"
    handler = functools.partial(QuietHandler, directory=str(site))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def chromium(*arguments: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, *arguments], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"chromium {arguments} failed:\n{result.stderr[-2000:]}"
    return result


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and unfiltered rows (RGB or RGBA, 8 bits) of a non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    position, chunks = 8, {}
    idat = b""
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        if kind == b"IDAT":
            idat += body
        else:
            chunks.setdefault(kind, body)
        position += 12 + length
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert depth == 8 and color in (2, 6) and interlace == 0, f"unexpected PNG format {depth=} {color=} {interlace=}"
    channels = 3 if color == 2 else 4
    stride = width * channels
    raw = zlib.decompress(idat)
    rows: list[bytes] = []
    previous = bytearray(stride)
    for row_index in range(height):
        start = row_index * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            up_left = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                estimate = left + up - up_left
                distances = (abs(estimate - left), abs(estimate - up), abs(estimate - up_left))
                line[i] = (line[i] + (left, up, up_left)[distances.index(min(distances))]) & 0xFF
        rows.append(bytes(line))
        previous = line
    return width, height, rows


def assert_rendered(screenshot: Path) -> None:
    """A screenshot of a rendered page: the expected size, and text and colours, not one flat fill."""
    width, height, rows = png_pixels(screenshot.read_bytes())
    assert (width, height) == (1280, 900)
    channels = len(rows[0]) // width
    colours = {row[i : i + 3] for row in rows[::4] for i in range(0, len(row), channels * 4)}
    assert len(colours) > 20, f"{screenshot.name} looks blank: {len(colours)} distinct colours"
    dark = sum(1 for row in rows[::4] for i in range(0, len(row), channels * 4) if sum(row[i : i + 3]) < 200)
    assert dark > 100, f"{screenshot.name} shows almost no text: {dark} dark pixels sampled"


def navigation_labels(dom: str) -> list[str]:
    """The link labels of Material's primary navigation (the sidebar), as rendered."""
    start = dom.index('class="md-nav md-nav--primary"')
    end = dom.index('class="md-content"', start)
    labels = re.findall(r'<span class="md-ellipsis">\s*(.*?)\s*</span>', dom[start:end], flags=re.S)
    return [re.sub(r"<[^>]+>", "", label).strip() for label in labels]


@pytest.mark.slow
@needs_chromium
@pytest.mark.parametrize(
    ("page", "expected"),
    [
        ("/", "Small, focused PyTorch training packages"),
        ("/api/nestedtensor/", 'id="danling.tensors.NestedTensor"'),
    ],
    ids=["front page", "API page"],
)
def test_page_renders_with_the_six_packages_in_the_navigation(
    site_url: str, page: str, expected: str, tmp_path: Path
) -> None:
    url = site_url + page
    chromium("--window-size=1280,900", f"--screenshot={tmp_path / 'page.png'}", url, cwd=tmp_path)
    assert_rendered(tmp_path / "page.png")

    dom = chromium("--dump-dom", url, cwd=tmp_path).stdout
    assert expected in dom
    labels = navigation_labels(dom)
    missing = [name for name in DISTRIBUTIONS if name not in labels]
    assert not missing, f"the navigation of {page} lacks {missing}; it lists {labels}"


def test_blank_screenshots_are_refused(tmp_path: Path) -> None:
    """The check above can fail: a flat white PNG of the same size is refused."""
    width, height = 1280, 900
    row = b"\x00" + b"\xff" * (width * 3)
    body = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", body) + chunk(b"IDAT", zlib.compress(row * height)) + chunk(b"IEND", b"")
    )
    (tmp_path / "blank.png").write_bytes(png)
    with pytest.raises(AssertionError, match="looks blank"):
        assert_rendered(tmp_path / "blank.png")
