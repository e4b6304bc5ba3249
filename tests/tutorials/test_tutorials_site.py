"""The documentation site: built strictly (any warning fails) and opened in headless Chromium.

Runs after ``test_tutorials.py`` (file order), whose executed notebooks the build renders; run alone, the
build executes the tutorials first (``tutorials/execute.py`` skips those already executed from the current
sources). Chromium is Debian's package (``.ci/run`` installs it); Playwright drives it through
``executable_path``, since Playwright's own browser download is not reachable here.
"""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("BGEKIT_DATA", REPO / ".." / "shared" / "data")).resolve()
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = REPO / "build" / "site-screenshots"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (DATA / "scifact").is_dir():
        pytest.skip(f"shared data not found at {DATA} (the tutorials need it)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "NO_MKDOCS_2_WARNING": "1"}
    executed = subprocess.run(
        [sys.executable, "tutorials/execute.py"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert executed.returncode == 0, executed.stdout[-3000:] + executed.stderr[-6000:]
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, f"mkdocs build --strict failed:\n{built.stderr[-6000:]}"
    assert (out / "index.html").is_file()
    return out


@pytest.fixture(scope="module")
def base_url(site: Path) -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


def _browser():  # noqa: ANN202 - a Playwright context manager
    if not os.path.isfile(CHROMIUM):
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium package (`apt-get install -y chromium`)"
        )
    from playwright.sync_api import sync_playwright

    return sync_playwright()


@pytest.mark.slow
def test_site_pages_render_in_chromium(base_url: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    pages = {
        "home": ("/", ["bgekit", "Quick start", "Tutorials"]),
        "tutorial": (
            "/tutorials/03_indexing/",
            ["3. Indexing", "recall@10", "SearchIndex nDCG@10 on SciFact test: 0.6451"],
        ),
        "api": ("/api/search_index/", ["SearchIndex", "recall", "Parameters"]),
    }
    with _browser() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on(
                "console",
                lambda msg: errors.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None,
            )
            page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
            page.on("requestfailed", lambda req: errors.append(f"request failed: {req.url}"))
            for name, (path, expected) in pages.items():
                start = time.perf_counter()
                response = page.goto(base_url + path, wait_until="load")
                assert response is not None and response.status == 200, (name, response and response.status)
                text = page.inner_text("body")
                for snippet in expected:
                    assert snippet in text, f"{name} page ({path}) lacks {snippet!r}"
                page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=name != "tutorial")
                assert (SCREENSHOTS / f"{name}.png").stat().st_size > 10_000
                if name == "tutorial":
                    # the recall plot: an output image that the browser decoded
                    widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
                    assert any(w >= 400 for w in widths), f"no rendered plot on {path}: {widths}"
                print(f"{name}: {path} rendered in {time.perf_counter() - start:.1f} s")
            assert not errors, "\n".join(errors)
        finally:
            browser.close()
