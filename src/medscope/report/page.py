"""The shell every medscope page shares (head, CSS, title, the research-use note): a page
template holds only its body, so the pages cannot drift apart in look."""

from __future__ import annotations

import html
from importlib import resources
from string import Template


def _template_text(name: str) -> str:
    return resources.files("medscope.report").joinpath(f"templates/{name}").read_text()


def render_page(body_template: str, *, title: str, css: str | None = None, note: str = "",
                **fields: str) -> str:
    """``templates/<body_template>`` filled with ``fields``, inside the shared page shell.
    ``title`` and ``note`` are plain text (escaped here); ``css`` names an extra stylesheet in
    ``templates/``; fields are HTML."""
    body = Template(_template_text(body_template)).substitute(fields)
    style = _template_text("base.css") + (_template_text(css) if css else "")
    return Template(_template_text("page.html")).substitute(
        title=html.escape(title), style=style, note=f" {html.escape(note)}" if note else "",
        body=body)
