"""The audit page: one self-contained HTML file (thumbnails embedded) listing what
``medscope audit`` found, leaks and conflicting labels first."""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from pathlib import Path

from PIL import Image

from medscope.data.audit import OUTLIER_Z, Audit, summary, write_audit_files
from medscope.data.io import BadImageError, array_to_image, open_image
from medscope.data.sources import npz_array
from medscope.errors import MedscopeError
from medscope.report.html import _table
from medscope.report.page import render_page
from medscope.run import atomic_write_text

THUMB_SIDE = 96
MAX_GROUPS = 100  # groups shown on the page (the CSV has all)
MAX_MEMBERS = 12  # thumbnails per group
MAX_ITEMS = 50  # label issues and outliers shown


def write_audit(audit: Audit, out: Path | str) -> Path:
    """The CSV files, audit.json and audit.html in ``out`` (earlier audit files there are
    replaced; nothing else is touched); returns the page's path."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MedscopeError(f"{out}: exists and is not a directory")
    write_audit_files(audit, out)
    return render_audit(audit, out)


def render_audit(audit: Audit, out: Path) -> Path:
    """Write ``out/audit.html``; returns its path."""
    page = render_page(
        "audit.html", title=f"medscope audit: {audit.source.root}", css="audit.css",
        note="Every list is a set of suspects for a person to review; the CSV files beside "
             "this page hold the complete lists.",
        summary=_summary(audit),
        counts=_counts(audit),
        duplicates=_duplicates(audit),
        source_groups=_source_groups(audit),
        label_issues=_label_issues(audit),
        outliers=_outliers(audit),
        bad_files=_bad_files(audit),
    )
    path = out / "audit.html"
    atomic_write_text(path, page)
    return path


def _summary(audit: Audit) -> str:
    s = summary(audit)
    rows = [
        ("images", s["images"]), ("unreadable", s["unreadable"]),
        ("exact duplicate groups (redundant images)",
         f"{s['exact_groups']} ({s['exact_redundant']})"),
        (f"near-duplicate groups (pHash distance ≤ {audit.phash_distance} of 64 bits)",
         s["near_groups"]),
        ("groups crossing splits (leaks)", s["leak_groups"]),
        *([("source groups (slide, patient, micrograph) spanning splits: groups (test images)",
            f"{s['source_leak_groups']} of {s['source_groups']} "
            f"({s['source_leak_test_images']})"),
           ("source groups with conflicting labels", s["source_conflict_groups"])]
          if s["source_groups"] else []),
        ("groups with conflicting labels", s["conflict_groups"]),
        ("suspected label errors", s["label_issues"]),
        (f"outliers (|robust z| > {OUTLIER_Z:g} within the class)", s["outliers"]),
        ("splits", audit.split_origin), ("label errors from", audit.label_origin),
    ]
    return _table(("", ""), rows)


def _counts(audit: Audit) -> str:
    counts = audit.counts()
    splits = sorted({s for per in counts.values() for s in per})
    rows = [(c, *(per.get(s, 0) for s in splits), sum(per.values())) for c, per in counts.items()]
    rows.append(("total", *(sum(per.get(s, 0) for per in counts.values()) for s in splits),
                 sum(sum(per.values()) for per in counts.values())))
    return _table(("class", *(s or "all" for s in splits), "total"), rows)


def _duplicates(audit: Audit) -> str:
    if not audit.duplicates:
        return "<p>None found.</p>"
    parts = []
    for n, g in enumerate(audit.duplicates[:MAX_GROUPS], 1):
        flags = (('<span class="flag leak">leak</span> ' if g.leak else "")
                 + ('<span class="flag conflict">conflicting labels</span> ' if g.conflict
                    else "")
                 + f'<span class="flag kind">{g.kind}'
                 + (f", max distance {g.max_distance}" if g.kind == "near" else "") + "</span>")
        figures = "".join(_figure(audit, i, _esc(audit.label(i), "·", audit.splits[i] or "all"))
                          for i in g.members[:MAX_MEMBERS])
        more = len(g.members) - MAX_MEMBERS
        extra = f"<p class='note'>… and {more} more (audit_duplicates.csv)</p>" if more > 0 else ""
        parts.append(f'<div class="group"><p>Group {n} ({len(g.members)} images) {flags}</p>'
                     f'<div class="thumbs">{figures}</div>{extra}</div>')
    rest = len(audit.duplicates) - MAX_GROUPS
    if rest > 0:
        parts.append(f"<p class='note'>{rest} more group(s) in audit_duplicates.csv.</p>")
    return "".join(parts)


def _source_groups(audit: Audit) -> str:
    if not audit.source_groups:
        return ("<p>The data names no groups (a <code>group</code> column, patches.csv, or "
                "<code>--group-pattern</code> on the file names).</p>")
    origin = (f"<code>--group-pattern {html.escape(audit.group_pattern)}</code>"
              if audit.group_pattern else "the data's own groups")
    note = (f"<p class='note'>{audit.source_groups} groups from {origin}. A group spanning "
            "splits or folds means the model is tested on other views of a source it trained "
            "on: split by group (<code>--resplit</code>, <code>medscope cv</code>) rather than "
            "dropping images.</p>")
    if not audit.source_issues:
        return note + "<p>None spans a split or mixes labels.</p>"
    rows = []
    for g in audit.source_issues[:MAX_GROUPS]:
        splits = Counter(audit.splits[i] or "all" for i in g.members)
        labels = sorted({audit.label(i) for i in g.members})
        rows.append((audit.source.samples[g.members[0]].group,
                     ", ".join(f"{k} {n}" for k, n in sorted(splits.items())),
                     ", ".join(labels), "yes" if g.conflict else ""))
    rest = len(audit.source_issues) - MAX_GROUPS
    more = f"<p class='note'>{rest} more in audit_source_groups.csv.</p>" if rest > 0 else ""
    return note + _table(("group", "images per split", "labels", "conflicting labels"),
                         rows) + more


def _label_issues(audit: Audit) -> str:
    note = f"<p class='note'>From {html.escape(audit.label_origin)}.</p>"
    if not audit.label_issues:
        return note + "<p>None listed.</p>"
    figures = "".join(
        _figure(audit, x.index, f"#{r} given <b>{html.escape(x.given)}</b> → "
                                + _esc(x.suggested, f"(p given {x.self_confidence:.2f}, p",
                                       x.suggested, f"{x.p_suggested:.2f})"))
        for r, x in enumerate(audit.label_issues[:MAX_ITEMS], 1))
    return (note + "<p class='note'>Ranked by self-confidence (the probability of the given "
            "label), lowest first; found by confident learning (cleanlab).</p>"
            f'<div class="thumbs">{figures}</div>')


def _outliers(audit: Audit) -> str:
    if not audit.outliers:
        return "<p>None found.</p>"
    figures = "".join(
        _figure(audit, o.index, _esc(f"{audit.label(o.index)}:", "; ".join(o.reasons)))
        for o in audit.outliers[:MAX_ITEMS])
    return (f"<p class='note'>Brightness, log contrast and log sharpness (variance of the "
            f"Laplacian) more than {OUTLIER_Z:g} robust z (median/MAD) from the class; sizes or "
            "modes the class otherwise never has. Most extreme first.</p>"
            f'<div class="thumbs">{figures}</div>')


def _bad_files(audit: Audit) -> str:
    ids = audit.ids()
    rows = [(ids[i], s.bad) for i, s in enumerate(audit.stats) if s.bad is not None]
    return _table(("file", "reason"), rows) if rows else "<p>None: every image could be read.</p>"


def _esc(*words: str) -> str:
    return html.escape(" ".join(words))


def _figure(audit: Audit, i: int, caption_html: str) -> str:
    """A thumbnail with the sample id and a caption (already HTML)."""
    name = html.escape(audit.source.sample_id(audit.source.samples[i]))
    return (f'<figure><img alt="{name}" src="{thumbnail(audit, i)}">'
            f"<figcaption>{name}<br>{caption_html}</figcaption></figure>")


def thumbnail(audit: Audit, i: int) -> str:
    """A small JPEG data URI of sample ``i`` (empty for an unreadable file)."""
    sample = audit.source.samples[i]
    try:
        img = (array_to_image(npz_array(sample.path, f"{sample.split}_images")[sample.index])
               if sample.in_array else open_image(sample.path))
    except (BadImageError, OSError):
        return ""
    img = img.convert("RGB")
    img.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
