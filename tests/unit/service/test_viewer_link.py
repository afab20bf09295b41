"""viewer_url_template: checked when the settings load, filled per job."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.settings import Settings
from service.viewer_link import DEFAULT_VIEWER_URL_TEMPLATE, check_viewer_url_template, viewer_url


def test_default_is_ohifs_viewer_route_with_the_study() -> None:
    assert Settings().viewer_url_template == DEFAULT_VIEWER_URL_TEMPLATE
    url = viewer_url(DEFAULT_VIEWER_URL_TEMPLATE, study_uid="1.2.3", series_uid="4", sop_uid="5")
    assert url == "http://127.0.0.1:3000/viewer?StudyInstanceUIDs=1.2.3"


def test_every_placeholder_is_filled_and_encoded() -> None:
    template = "https://v.example.org/{study_uid}/{series_uid}/{sop_uid}?a={{b}}"
    check_viewer_url_template(template)
    url = viewer_url(template, study_uid="1.2", series_uid="3.4", sop_uid="a/b&c")
    assert url == "https://v.example.org/1.2/3.4/a%2Fb%26c?a={b}"


def test_empty_template_or_no_study_gives_no_link() -> None:
    assert Settings(viewer_url_template="  ").viewer_url_template == ""
    assert viewer_url("", study_uid="1.2", series_uid="3", sop_uid="4") is None
    assert viewer_url(DEFAULT_VIEWER_URL_TEMPLATE, study_uid="", series_uid="", sop_uid="") is None


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("ftp://x/{study_uid}", "http:// or https://"),
        ("/viewer?StudyInstanceUIDs={study_uid}", "http:// or https://"),
        ("http://x/{patient_id}", "unknown placeholder {patient_id}"),
        ("http://x/{study_uid!r}", "no format or conversion"),
        ("http://x/{study_uid:>9}", "no format or conversion"),
        ("http://x/{", "literal brace"),
        ("http://user:pw@x/{study_uid}", "no user or password"),
    ],
)
def test_bad_templates_are_refused(template: str, message: str) -> None:
    with pytest.raises(ValidationError, match="viewer_url_template") as caught:
        Settings(viewer_url_template=template)
    assert message in str(caught.value)
