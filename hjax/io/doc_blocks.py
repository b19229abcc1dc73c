"""The generated and include blocks of README.md and docs/*.md, rewritten by script.

A generated block is ``<!-- report:begin OPTIONS (experiments/report.py) -->`` ...
``<!-- report:end -->``: its text is rebuilt by a ``make_block(options, where)`` function
the caller gives (``options``: the marker's ``key=value`` words as a dict; ``where``: the
file, for errors). An include block, ``<!-- include:begin PATH -->`` ...
``<!-- include:end -->``, gets the current text of PATH (relative to the file holding it),
headings demoted so that the included file's top level sits under the page's sections.
"""

from __future__ import annotations

import glob
import os
import re
from typing import Callable

from hjax.errors import ConfigError
from hjax.io.results import write_atomic

BEGIN, END = "<!-- report:begin (experiments/report.py) -->", "<!-- report:end -->"
INCLUDE = re.compile(r"(<!-- include:begin (\S+) -->\n)(.*?)(<!-- include:end -->)", re.S)
GENERATED = re.compile(r"(<!-- report:begin((?: [a-z_]+=\S*)*) \(experiments/report\.py\) -->)"
                       r"\n?(.*?)(<!-- report:end -->)", re.S)
HEADING = re.compile(r"^(#+) ", re.M)
INCLUDED_TOP_LEVEL = 4      # an included file's top heading becomes a README "####"

MakeBlock = Callable[[dict, str], str]


def demote_headings(text: str) -> str:
    """Shift the file's Markdown headings so that its top level is INCLUDED_TOP_LEVEL (a
    standalone file's "# Title" must not become a top-level README section)."""
    levels = [len(h) for h in HEADING.findall(text)]
    if not levels:
        return text
    shift = max(0, INCLUDED_TOP_LEVEL - min(levels))
    return HEADING.sub(lambda m: "#" * min(6, len(m.group(1)) + shift) + " ", text)


def refresh_includes(content: str, root: str, name: str = "README") -> str:
    """Every include block replaced by its file's text, headings demoted (a missing file is
    an error)."""
    def fill(m):
        path = os.path.join(root, m.group(2))
        if not os.path.exists(path):
            raise ConfigError(f"{name} includes {m.group(2)}, which does not exist")
        with open(path) as f:
            text = demote_headings(f.read())
        return m.group(1) + text + ("" if text.endswith("\n") else "\n") + m.group(4)
    return INCLUDE.sub(fill, content)


def marker_options(options: str) -> dict[str, str]:
    """A generated block marker's ``key=value`` words as a dict."""
    return dict(word.split("=", 1) for word in options.split())


def refresh_file(path, make_block: MakeBlock, require_block=True):
    """Rewrite ``path``'s generated blocks with ``make_block(options, where)`` and its include
    blocks with their files' text. Returns whether the file held a generated block."""
    try:
        with open(path) as f:
            content = f.read()
    except OSError as e:
        raise ConfigError(f"{path} cannot be read ({e.strerror})") from None
    name = os.path.basename(path) if require_block else path
    found = bool(GENERATED.search(content))
    if require_block and not found:
        raise ConfigError(f"{path} has no generated block ({BEGIN} ... {END})")
    content = GENERATED.sub(
        lambda m: f"{m.group(1)}\n{make_block(marker_options(m.group(2)), name)}{m.group(4)}",
        content)
    content = refresh_includes(content, os.path.dirname(os.path.abspath(path)), name)
    write_atomic(path, content)
    return found


def doc_pages(readme, patterns):
    """The Markdown files that ``patterns`` (globs relative to the README's folder) name."""
    root = os.path.dirname(os.path.abspath(readme))
    pages = []
    for pattern in patterns:
        for path in sorted(glob.glob(os.path.join(root, pattern))):
            if os.path.abspath(path) != os.path.abspath(readme) and path not in pages:
                pages.append(path)
    return pages


def update_readme(readme, text, make_block: MakeBlock | None = None, docs=()):
    """Rewrite the README's generated blocks (and each docs page's) and their includes.

    ``make_block(options, where)`` builds a block's text from its marker's options; without
    it every block gets ``text``.
    """
    make = make_block or (lambda options, where: text)
    refresh_file(readme, make)
    for page in doc_pages(readme, docs):
        refresh_file(page, make, require_block=False)
