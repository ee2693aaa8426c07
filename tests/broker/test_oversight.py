"""The policy view of [audit.ship] and [notify]: a URL is kept as where it points plus a
digest, so a reload record shows a change without the webhook's credential path."""

from __future__ import annotations

import pytest

from blindkey.broker.oversight import masked, oversight_changes


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("tcp://10.0.0.5:514", "tcp://10.0.0.5:514"),
        ("http://collector:4318/", "http://collector:4318"),
        ("https://hooks.slack.com/services/T0/B0/Sekrit", "https://hooks.slack.com/... (sha256 "),
        ("https://user:Sekrit@siem.example/v1/logs", "https://siem.example/... (sha256 "),
        ("https://siem.example/?token=Sekrit", "https://siem.example/... (sha256 "),
        ("http://[::1", "(not a URL, sha256 "),
        (True, True),
        ("", ""),
    ],
)
def test_a_url_is_kept_as_where_it_points(value: object, shown: object) -> None:
    got = masked(value)
    if isinstance(shown, str) and shown.endswith("sha256 "):
        assert isinstance(got, str) and got.startswith(shown) and "Sekrit" not in got
    else:
        assert got == shown


def test_any_change_is_named_and_a_baseline_without_the_tables_names_none() -> None:
    before = {"notify": {"desktop": True, "webhook": ""}, "audit_ship": {"syslog": "tcp://a:1"}}
    after = {"notify": {"desktop": False, "webhook": ""}, "audit_ship": {"syslog": ""}}
    changes = oversight_changes(before, after)
    assert [c.split(" changes")[0] for c in changes] == ["[audit.ship] syslog", "[notify] desktop"]
    assert oversight_changes({}, after) == []
    assert oversight_changes(before, before) == []
