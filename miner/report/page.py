"""The report's HTML: Jinja2 templates (``miner/report/templates``) rendered with autoescaping on.

Everything the archive or the job supplies (file names, image ids, finding names, error messages, paths) reaches
the page only through a template variable, and every variable is HTML-escaped, in text and in attributes alike:
a file named ``<img src=x onerror=alert(1)>.png`` is shown as that text. Links and picture paths are built from
slugs (`slug`) and positions, never from an image's name. The pages also carry a Content-Security-Policy that
allows no script and nothing from outside the report's folder, as a second line of defence.

Characters that would hide or rearrange text (controls C0 and C1, bidirectional controls such as U+202E, zero-width
characters, lone surrogates, line separators: `miner.io.visible`) are shown escaped, never raw: in text as a
marked span ``<span class="esc" title="RIGHT-TO-LEFT OVERRIDE">\u202e</span>`` (the environment's `finalize`
does it for every variable, so no template can forget it), in attributes and the page title as the plain
``\u202e`` (the ``plain`` filter, which those places use). A name ``a\u202egnp.exe`` therefore reads as
written, not as ``aexe.png``.
"""
from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).parent / "templates"


def marked(text: str) -> Any:
    """`text` as safe HTML: escaped, and each character `miner.io.visible` escapes shown as a marked span with
    its escape as text and its Unicode name as the tooltip (a `markupsafe.Markup`)."""
    import unicodedata

    from markupsafe import Markup, escape

    from miner.io import INVISIBLE, escape_code

    parts = []
    for char in text:
        if unicodedata.category(char) in INVISIBLE:
            name = unicodedata.name(char, f"U+{ord(char):04X}")
            parts.append(Markup('<span class="esc" title="{}">{}</span>').format(name, escape_code(char)))
        else:
            parts.append(escape(char))
    return Markup("").join(parts)


def _finalize(value: Any) -> Any:
    """Every ``{{ value }}`` of every template: text with invisible characters becomes `marked` HTML; Markup
    (a macro's output, already finalized) and numbers pass as they are; autoescape does the rest."""
    from markupsafe import Markup

    if isinstance(value, str) and not isinstance(value, Markup) and not value.isprintable():
        return marked(value)
    return value


def plain(value: Any) -> Any:
    """The ``plain`` filter, for attributes and the title (no markup allowed there): the text with invisible
    characters escaped as ``\\uXXXX`` (`miner.io.visible`) and HTML-escaped."""
    from markupsafe import escape

    from miner.io import visible

    return escape(visible(str(value)))


@lru_cache(maxsize=1)
def environment() -> Any:
    """The Jinja2 environment: templates of this package, autoescape on for every template, strict undefined,
    every variable through `_finalize` (invisible characters shown escaped) and the ``plain`` filter."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             finalize=_finalize)
    env.filters["plain"] = plain
    return env


def render_page(template: str, **context: Any) -> str:
    """One page from `template` (a file name under ``templates/``) and its variables."""
    return environment().get_template(template).render(**context)


def slug(name: str) -> str:
    """A file-name-safe, URL-safe form of `name` (letters, digits, ``-``), unique per name: names that lose
    characters get 8 hex digits of their hash appended (``Pleural_Thickening`` -> ``pleural-thickening-1a2b3c4d``)."""
    text = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40]
    if text != name.lower() or not text:
        text = f"{text or 'finding'}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return text
