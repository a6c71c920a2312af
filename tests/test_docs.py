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


#: Pages that must show at least one picture: the home page, the quickstart, the model
#: cards and every model family's page.
ILLUSTRATED = ["index.md", "quickstart.md", "pretrained.md"] + [
    p.relative_to(DOCS).as_posix() for p in sorted((DOCS / "models").glob("*.md"))
]


@pytest.mark.parametrize("page", ILLUSTRATED)
def test_main_pages_show_a_picture(page):
    text = (DOCS / page).read_text(encoding="utf-8")
    assert IMAGE.search(text), f"{page} shows no image"


def test_every_shipped_model_has_its_pictures_in_the_docs():
    """`recipes/figures.py` draws a grid per shipped model and a gallery per dataset;
    the model cards show the grids and the home page the galleries. New weights need a
    rerun of the script (and of `recipes/cards.py docs`)."""
    from genmnist.models import DATASETS, pretrained_dir
    from genmnist.registry import BUILTIN_SOURCE, MODELS

    cards = (DOCS / "pretrained.md").read_text(encoding="utf-8")
    home = (DOCS / "index.md").read_text(encoding="utf-8")
    shipped = [
        (dataset, entry.name)
        for dataset in DATASETS
        for entry in MODELS
        if entry.source == BUILTIN_SOURCE and pretrained_dir(entry.name, dataset)
    ]
    assert shipped
    for dataset, name in shipped:
        grid = f"images/samples/{dataset}/{name}.png"
        assert (DOCS / grid).is_file(), f"no {grid}: run recipes/figures.py"
        assert f"]({grid})" in cards, f"pretrained.md lacks {grid}: run recipes/cards.py docs"
    for dataset in {d for d, _ in shipped}:
        assert f"](images/gallery-{dataset}.png)" in home, f"index.md lacks the {dataset} gallery"
