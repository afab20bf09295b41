"""The job page's "open in viewer" link: ``viewer_url_template`` with the job's UIDs.

The template is an http(s) URL with any of the placeholders ``{study_uid}``,
``{series_uid}`` and ``{sop_uid}`` (the received image's UIDs), e.g. OHIF's
``/viewer?StudyInstanceUIDs={study_uid}``. Checked once when the settings load;
each UID goes in percent-encoded (a UID is digits and dots, so it reads the same).
"""

from __future__ import annotations

import string
from typing import Final
from urllib.parse import quote, urlsplit

#: OHIF's viewer route on its default development port (README "Viewing results in OHIF").
DEFAULT_VIEWER_URL_TEMPLATE: Final = "http://127.0.0.1:3000/viewer?StudyInstanceUIDs={study_uid}"
PLACEHOLDERS: Final = frozenset({"study_uid", "series_uid", "sop_uid"})


def check_viewer_url_template(template: str) -> None:
    """ValueError unless ``template`` is an http(s) URL whose only fields are PLACEHOLDERS."""
    try:
        fields = [
            (name, spec, conversion)
            for _, name, spec, conversion in string.Formatter().parse(template)
            if name is not None
        ]
    except ValueError as exc:
        raise ValueError(
            f"viewer_url_template: {exc} (a literal brace is written {{{{ }}}})"
        ) from exc
    for name, spec, conversion in fields:
        if name not in PLACEHOLDERS:
            allowed = ", ".join("{" + p + "}" for p in sorted(PLACEHOLDERS))
            raise ValueError(f"viewer_url_template: unknown placeholder {{{name}}}; use {allowed}")
        if spec or conversion:
            raise ValueError(f"viewer_url_template: {{{name}}} takes no format or conversion")
    parts = urlsplit(render(template, study_uid="1.2", series_uid="1.2", sop_uid="1.2"))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("viewer_url_template must be an http:// or https:// URL (or empty)")
    if parts.username or parts.password:
        raise ValueError("viewer_url_template: no user or password in the URL")


def render(template: str, *, study_uid: str, series_uid: str, sop_uid: str) -> str:
    """The template with the UIDs put in (no check: the settings checked it)."""
    return template.format(
        study_uid=quote(study_uid, safe=""),
        series_uid=quote(series_uid, safe=""),
        sop_uid=quote(sop_uid, safe=""),
    )


def viewer_url(template: str, *, study_uid: str, series_uid: str, sop_uid: str) -> str | None:
    """The link for one job; None when the template is empty or the job has no study UID."""
    if not template or not study_uid:
        return None
    return render(template, study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid)
