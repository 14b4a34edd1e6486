"""The report's HTML: Jinja2 templates (``miner/report/templates``) rendered with autoescaping on.

Everything the archive or the job supplies (file names, image ids, finding names, error messages, paths) reaches
the page only through a template variable, and every variable is HTML-escaped, in text and in attributes alike:
a file named ``<img src=x onerror=alert(1)>.png`` is shown as that text. Links and picture paths are built from
slugs (`slug`) and positions, never from an image's name. The pages also carry a Content-Security-Policy that
allows no script and nothing from outside the report's folder, as a second line of defence.
"""
from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).parent / "templates"


@lru_cache(maxsize=1)
def environment() -> Any:
    """The Jinja2 environment: templates of this package, autoescape on for every template, strict undefined."""
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


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
