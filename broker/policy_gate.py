"""How the broker takes config.toml: every change of policy it did not approve itself is
a `reload` record, and once an approver exists one that widens the approved policy is
refused (the approved text keeps serving) until `blindkey config approve`."""

from __future__ import annotations

import hashlib
import hmac
import logging
import pwd
from pathlib import Path

from blindkey.audit.events import append_event
from blindkey.broker.approvals.service import Approvals
from blindkey.broker.policy import (
    Held,
    PolicyStore,
    changed_keys,
    policy_view,
    settings_from_text,
    widenings,
)
from blindkey.config.errors import BlindkeyError, ConfigError
from blindkey.config.loader import read_config_text as loaded_text
from blindkey.config.model import Settings
from blindkey.config.paths import Paths

log = logging.getLogger("blindkey.broker")


def read_config_text(file: Path) -> str:
    """The file's text; an empty one is refused: an editor truncates before it writes, and
    that is never "no policy"."""
    text = loaded_text(file)
    if not text.strip():
        raise ConfigError(f"{file}: the file is empty")
    return text


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def owner_of(file: Path) -> str:
    try:
        uid = file.stat().st_uid
        return pwd.getpwuid(uid).pw_name
    except (OSError, KeyError):
        return "unknown"


class PolicyGate:
    def __init__(self, paths: Paths, approvals: Approvals, held: Held) -> None:
        self.paths = paths
        self.approvals = approvals
        self.held = held
        self.store = PolicyStore(paths)
        # Why the file on disk is not what the broker serves (for `proxy status`).
        self.refused: str | None = None
        # sha256 of the config.toml text served: a proxy applies that text only unasked.
        self.served: str | None = None
        self._noted: bytes | None = None

    def _guarded(self) -> bool:
        self.approvals.load()
        return self.approvals._has_approvers(self.approvals.state)

    def admit(self) -> Settings:
        """The settings to serve: config.toml's, or the approved ones when the file widens
        them without a code. Raises ConfigError when the file does not load."""
        file = self.paths.config_file
        text = read_config_text(file)
        settings = settings_from_text(file, text)
        view = policy_view(settings)
        try:
            kept = self.store.load()
        except BlindkeyError as exc:
            if self._guarded():
                raise ConfigError(f"the approved policy cannot be read: {exc}") from exc
            kept = None
        if kept is None or kept.get("policy") == view:
            if kept is None:
                self._save(text, view)
            self.refused, self.served = None, _sha(text)
            return settings
        approved = kept["policy"]
        widened = widenings(approved, view, self.held)
        refuse = bool(widened) and self._guarded()
        digest = hashlib.sha256(text.encode()).digest()
        if self._noted is None or not hmac.compare_digest(digest, self._noted):
            self._noted = digest
            self._record(approved, view, widened, refuse)
        if not refuse:
            self._save(text, view)
            self.refused, self.served = None, _sha(text)
            return settings
        self.refused = (
            f"config.toml widens the approved policy ({'; '.join(widened)}): the broker "
            "serves the approved policy until `blindkey config approve --by NAME --code CODE`"
        )
        log.error("reload refused: %s", self.refused)
        self.served = _sha(str(kept["text"]))
        return settings_from_text(file, str(kept["text"]))

    def _save(self, text: str, view: dict[str, object]) -> None:
        try:
            self.store.save(text, view)
        except BlindkeyError as exc:
            # Without a baseline the next approver's gate starts from the file it then finds.
            log.error("the approved policy was not saved: %s", exc)

    def _record(
        self, before: dict[str, object], after: dict[str, object], widened: list[str], refused: bool
    ) -> None:
        keys, old, new = changed_keys(before, after)
        fields = {
            "change": "reload",
            "by": owner_of(self.paths.config_file),
            "via": "reload",
            "names": keys,
            "before": old,
            "after": new,
            "widens": widened,
            "refused": refused,
        }
        try:
            append_event(self.paths.audit_dir, "config", fields)
        except BlindkeyError as exc:
            log.error("the reload record was not written: %s", exc)
