"""MkDocs hook (mkdocs.yml `hooks:`): the manual's links to files outside docs/ (a benchmark script, an
example input) work in the built site too, and are checked.

On GitHub a page's `../benchmarks/drafts.py` link opens the script; in the site nothing outside docs/
exists, and MkDocs would warn (fail, under --strict). So every such link's target is copied into the
site under `source/` and the link is pointed there; a target that does not exist fails the build, as a
broken link between pages does. tests/test_docs_links.py checks the same links without MkDocs.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

# [text](target) outside code; the target has no spaces, and may carry a #fragment.
LINK = re.compile(r"(\[[^\]\n]*\]\()([^)\s#]+)(#[^)\s]*)?\)")
FENCE = re.compile(r"^(```|~~~)")
SITE_FOLDER = "source"


def _outside_targets(markdown: str, page_dir: str) -> list[tuple[str, str]]:
    """(link target as written, repository path) for each link that leaves docs/, code blocks skipped."""
    found, in_fence = [], False
    for line in markdown.splitlines():
        if FENCE.match(line.lstrip()):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        for match in LINK.finditer(line):
            target = match.group(2)
            if "://" in target or target.startswith("mailto:"):
                continue
            joined = posixpath.normpath(posixpath.join(page_dir, target))
            if joined.startswith("../"):
                found.append((target, joined[3:]))
    return found


def _repo_root(config) -> Path:
    return Path(config["docs_dir"]).resolve().parent


def on_files(files, config):
    root = _repo_root(config)
    added = set()
    for file in list(files.documentation_pages()):
        text = Path(file.abs_src_path).read_text(encoding="utf-8")
        for target, repo_path in _outside_targets(text, posixpath.dirname(file.src_uri)):
            source = root / repo_path
            if not source.is_file():
                raise PluginError(f"{file.src_uri}: link to {target}, but {repo_path} does not exist")
            if repo_path not in added:
                added.add(repo_path)
                files.append(File.generated(config, f"{SITE_FOLDER}/{repo_path}", abs_src_path=str(source)))
    return files


def on_page_markdown(markdown, page, config, files):
    page_dir = posixpath.dirname(page.file.src_uri)
    for target, repo_path in set(_outside_targets(markdown, page_dir)):
        in_site = posixpath.relpath(f"{SITE_FOLDER}/{repo_path}", page_dir or ".")
        markdown = markdown.replace(f"]({target})", f"]({in_site})").replace(f"]({target}#", f"]({in_site}#")
    return markdown
