"""The documentation's pages: no unfinished text, and every image they show exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_pages_have_no_unfinished_text(page):
    text = page.read_text(encoding="utf-8")
    for marker in ("TODO", "PLACEHOLDER", "TBD", "FIXME"):
        assert marker not in text, f"{page.relative_to(DOCS)} still says {marker}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_every_image_a_page_shows_exists(page):
    for target in IMAGE.findall(page.read_text(encoding="utf-8")):
        if "://" in target:
            continue
        assert (page.parent / target.split("#")[0]).is_file(), f"{page}: missing {target}"


def test_the_pages_are_found():
    assert len(PAGES) > 10 and any(IMAGE.findall(p.read_text()) for p in PAGES)
