"""README.md and docs/*.md: every relative link names a file that exists, and every #anchor a heading of
its page, slugged as MkDocs slugs it for the site (Python-Markdown's toc extension) and as GitHub does
for the same files on the web; headings are written so the two agree. The README stays short, with the
install-and-grade block first. `mkdocs build --strict` (.ci/run) checks the site's links too; this
test needs no MkDocs and also covers README.md, which is not part of the site."""

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def prose_lines(text: str):
    """(line number, line) outside fenced code blocks."""
    in_fence = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence:
            yield number, line


def heading_text(raw: str) -> str:
    """What a heading renders as text: code spans keep their content, links their text, bold its words."""
    text = CODE_SPAN.sub(lambda m: m.group(2), raw)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return text.replace("**", "")


def mkdocs_slug(text: str) -> str:
    """Python-Markdown's toc.slugify, which MkDocs (and Material) use for heading ids."""
    value = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    value = re.sub(r"[^\w\s-]", "", value).strip().lower()
    return re.sub(r"[-\s]+", "-", value)


def github_slug(text: str) -> str:
    """GitHub's heading anchors: lowercased, punctuation other than - and _ dropped, each space a -."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def headings(path: Path) -> list[tuple[int, str]]:
    return [(n, heading_text(m.group(2))) for n, line in prose_lines(path.read_text("utf-8"))
            if (m := HEADING.match(line))]


def anchors(path: Path) -> set[str]:
    return {mkdocs_slug(text) for _, text in headings(path)}


def links(path: Path):
    """(line number, target) for every link in the prose; a link inside a code span is not a link, while
    a link's text may hold code ([`score`](cli.md))."""
    for number, line in prose_lines(path.read_text("utf-8")):
        code = [m.span() for m in CODE_SPAN.finditer(line)]
        for match in LINK.finditer(line):
            if not any(start <= match.start() < end for start, end in code):
                yield number, match.group(1)


def test_the_pages_are_found():
    names = {p.name for p in PAGES}
    assert {"README.md", "index.md", "install.md", "formats.md", "cli.md", "serve.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for number, target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):   # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        where = f"{page.relative_to(ROOT)}:{number}: {target}"
        if not dest.exists():
            broken.append(f"{where}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{where}: {dest.name} has no heading with the anchor #{anchor}")
        elif anchor and dest.suffix != ".md":
            broken.append(f"{where}: an anchor into a file that is not a page")
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_headings_slug_the_same_on_github_and_in_the_site_and_once_a_page(page):
    differ = [f"line {n}: {text!r}: site #{mkdocs_slug(text)}, GitHub #{github_slug(text)}"
              for n, text in headings(page) if mkdocs_slug(text) != github_slug(text)]
    assert not differ, "reword these headings so a link works in both places:\n" + "\n".join(differ)
    slugs = [mkdocs_slug(text) for _, text in headings(page)]
    assert len(slugs) == len(set(slugs)), f"two headings with one anchor: {sorted(s for s in slugs if slugs.count(s) > 1)}"


def test_the_slugs_are_the_ones_python_markdown_makes():
    """The slug above against the real thing, where the docs extra is installed: the ids
    Python-Markdown's toc extension gives every heading of every page."""
    markdown = pytest.importorskip("markdown")

    def ids(tokens):
        for token in tokens:
            yield token["id"]
            yield from ids(token["children"])

    for page in PAGES:
        md = markdown.Markdown(extensions=["toc", "tables", "fenced_code"])
        md.convert(page.read_text("utf-8"))
        assert sorted(ids(md.toc_tokens)) == sorted(anchors(page)), page.name


def test_the_link_checker_sees_a_broken_link_and_anchor(tmp_path):
    page = tmp_path / "a.md"
    page.write_text("# Title: one\n\nSee [b](b.md), [here](#title-one), [x](#nope) and `[c](c.md)`.\n"
                    "```\n[d](d.md)\n```\n", encoding="utf-8")
    assert [t for _, t in links(page)] == ["b.md", "#title-one", "#nope"]
    assert anchors(page) == {"title-one"}


def test_the_readme_is_short_and_starts_with_install_and_grade():
    readme = (ROOT / "README.md").read_bytes()
    assert len(readme) <= 12_000, f"README.md is {len(readme)} bytes; move detail into docs/"
    blocks = re.findall(r"^```\w*\n(.*?)^```", readme.decode("utf-8"), flags=re.M | re.S)
    first = blocks[0].splitlines()
    assert any("pip install" in line for line in first)
    assert any(line.startswith("prom-local score ") for line in first)
    assert not any(line.rstrip().endswith(("&&", "\\")) for line in first), "one command a line"
    commands = [block for block in blocks if not block.lstrip().startswith("{")]   # not JSON rows
    assert commands[1].strip() == "bash .ci/run", "the test command comes right after install and grade"
