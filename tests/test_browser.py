"""Open the built book in headless Debian Chromium, with the network cut off, and check it.

Run after `make book` (the fixture builds the book if `_build/html` is missing). Chromium is
never downloaded: the test drives the system's `/usr/bin/chromium` through Playwright. Where
no Chromium is installed the test skips, except under CI (`CI=true`), where it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND",
]


def slider_pages() -> list[Path]:
    """Built pages that carry at least one learning-rate / weight-decay figure."""
    pages = sorted((HTML / "notebooks").glob("*.html")) if HTML.exists() else []
    return [p for p in pages if "lr-wd-figure" in p.read_text(encoding="utf-8")]


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but no chromium is installed: .ci/run must install it")
        pytest.skip("no chromium on PATH: install Debian's chromium to run the browser test")
    if not (HTML / "index.html").exists():
        subprocess.run(
            [sys.executable, "-m", "jupyter_book", "build", "-W", "-n", "--keep-going", "."],
            cwd=ROOT,
            check=True,
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 1000}, offline=True)
    pg = context.new_page()
    external = []

    def only_local(route):
        if route.request.url.startswith(("file:", "data:", "blob:")):
            route.continue_()
        else:
            external.append(route.request.url)
            route.abort()

    pg.route("**/*", only_local)
    pg.external_requests = external
    yield pg
    context.close()


def open_page(page, relative: str):
    page.goto((HTML / relative).as_uri(), wait_until="load")
    return page


def test_intro_renders(page):
    open_page(page, "book/intro.html")
    assert "Restrained Instabilities" in page.title()
    heading = page.locator("main h1").first.inner_text()
    assert "Restrained Instabilities" in heading
    assert page.locator("main").inner_text().count("Edge of Stability") >= 1
    assert page.locator("nav.bd-docs-nav a").count() >= 3  # the table of contents


def test_math_is_typeset_offline(page):
    open_page(page, "book/notation.html")
    page.wait_for_selector("mjx-container", timeout=20_000)
    assert page.locator("mjx-container").count() > 5
    text = page.locator("main").inner_text()
    assert "$$" not in text and "\\frac" not in text


def test_a_figure_image_has_loaded(page):
    open_page(page, "notebooks/00_the_puzzle.html")
    page.wait_for_selector("main .cell_output img", timeout=20_000)
    widths = page.eval_on_selector_all(
        "main .cell_output img", "els => els.map(e => e.naturalWidth)"
    )
    assert widths and max(widths) > 100


SHOWN = "el => {{ const i = el.querySelector('img.{cls}'); return i && i.offsetParent; }}"


def visible_frame(figure) -> str | None:
    classes = figure.evaluate(
        """el => [...el.querySelectorAll('img.widget-image')]
                 .filter(i => i.offsetParent !== null && i.naturalWidth > 0)
                 .map(i => [...i.classList].find(c => c.startsWith('grid-')))"""
    )
    return classes[0] if len(classes) == 1 else None


def test_chapter1_slider_is_rendered(page):
    open_page(page, "notebooks/01_floating_point.html")
    page.wait_for_selector(".lr-wd-figure img.widget-image", state="visible", timeout=30_000)
    figure = page.locator(".lr-wd-figure").first
    assert figure.locator(".noUi-handle").count() == 2
    assert visible_frame(figure) == "grid-0-0"


@pytest.mark.parametrize("html_page", slider_pages(), ids=lambda p: p.stem)
def test_each_slider_switches_the_figure(page, html_page):
    open_page(page, f"notebooks/{html_page.name}")
    page.wait_for_selector(".lr-wd-figure img.widget-image", state="visible", timeout=30_000)
    figures = page.locator(".lr-wd-figure")
    assert figures.count() >= 1
    for n in range(figures.count()):
        figure = figures.nth(n)
        figure.scroll_into_view_if_needed()
        assert visible_frame(figure) == "grid-0-0"
        handles = figure.locator(".noUi-handle")
        handles.nth(1).focus()
        page.keyboard.press("ArrowRight")
        page.wait_for_function(
            SHOWN.format(cls="grid-0-1"),
            arg=figure.element_handle(),
            timeout=5_000,
        )
        handles.nth(0).focus()
        page.keyboard.press("ArrowRight")
        page.wait_for_function(
            SHOWN.format(cls="grid-1-1"),
            arg=figure.element_handle(),
            timeout=5_000,
        )
        assert visible_frame(figure) == "grid-1-1"
    assert not [u for u in page.external_requests if not re.search(r"\.(woff2?|ttf)$", u)]
