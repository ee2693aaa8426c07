"""[audit.ship] is read from its own table: a URL of another kind, a port left out or a
missing CA file is refused naming the key; a key [audit.ship] does not know is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from blindkey.audit.ship.shipping import destinations
from blindkey.config.errors import ConfigError
from blindkey.config.loader import load_settings
from blindkey.config.outputs import ShipSettings


def load(tmp_path: Path, text: str) -> ShipSettings:
    file = tmp_path / "config.toml"
    file.write_text(text)
    return load_settings(file).audit_ship


def test_destinations_are_read_from_the_nested_table(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        '[audit]\nfsync = true\n\n[audit.ship]\nsyslog = "tls://siem.example.com:6514"\n'
        'otlp = "http://127.0.0.1:4318"\n',
    )
    assert destinations(settings) == {
        "syslog": "tls://siem.example.com:6514",
        "otlp": "http://127.0.0.1:4318",
    }
    assert destinations(load(tmp_path, "[audit]\nfsync = true\n")) == {}
    journal = load(tmp_path, '[audit.ship]\njournald = true\njournal_socket = "/run/j.sock"\n')
    assert destinations(journal) == {"journald": "unix:/run/j.sock"}


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('syslog = "udp://h:514"', "syslog"),
        ('syslog = "tcp://h"', "syslog"),  # no port
        ('syslog = "http://h:514"', "syslog"),
        ('otlp = "tcp://h:4318"', "otlp"),
        ('otlp = "http://:4318"', "otlp"),
        ('ca_file = "/no/such/ca.pem"', "ca_file"),
        ('journald = true\njournal_socket = "run/journal.sock"', "journal_socket"),
        ('journald = "yes"', "journald"),
    ],
)
def test_a_wrong_destination_is_refused_naming_its_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"\[audit\.ship\] {key}: "):
        load(tmp_path, f"[audit.ship]\n{text}\n")


def test_an_unknown_key_of_audit_ship_is_refused_and_ship_is_no_key_of_audit(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match=r"\[audit\.ship\] unknown key 'sylog'"):
        load(tmp_path, '[audit.ship]\nsylog = "tcp://h:1"\n')
    with pytest.raises(ConfigError, match=r"\[audit\.ship\] must be a table"):
        load(tmp_path, '[audit]\nship = "tcp://h:1"\n')
