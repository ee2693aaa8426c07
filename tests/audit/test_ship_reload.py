"""[audit.ship] applies at reload, not only at restart: a destination added starts
receiving (from the audit's first record), one re-pointed receives at its new address,
one removed stops and keeps its cursor file; the others carry on where they were."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from blindkey.audit.ship.cursor import cursor_file, load_cursor
from blindkey.config.edit import toml_table
from blindkey.config.paths import Paths
from tests.audit.journal_receiver import JournalReceiver
from tests.audit.ship_receivers import OtlpReceiver, audit_lines, wait_for
from tests.audit.test_ship_journald import journald_at
from tests.audit.test_ship_syslog import calls
from tests.proxy.conftest import Env, open_env


def ship(**keys: Any) -> Any:
    def configure(document: Any) -> None:
        table = toml_table(document, "audit", "ship")
        for key, value in keys.items():
            table[key] = value

    return configure


async def reloaded(env: Env, change: Any) -> None:
    """The change in force: the process shipping by the old settings has ended (after the
    batch it had in flight), so what is written next goes by the new ones."""
    before = env.server.shipping.child
    env.configure(change)
    assert await env.server.reload()
    if before is not None:
        await wait_for(lambda: before.poll() is not None, what="the replaced process to end")


def has_everything(received: list[bytes], audit_dir: Path) -> bool:
    return received == audit_lines(audit_dir)


async def test_destinations_added_repointed_and_removed_at_reload(
    home: Paths, tmp_path: Path
) -> None:
    first, second = OtlpReceiver(), OtlpReceiver()
    await first.start()
    await second.start()
    journal = JournalReceiver(tmp_path / "journal.socket")
    journal.start()
    audit_dir = home.audit_dir
    try:
        async with open_env(home, journald_at(journal.path)) as env:
            await calls(env, 10)
            await reloaded(env, ship(otlp=first.url))  # added
            await calls(env, 10)
            await wait_for(lambda: has_everything(first.bodies(), audit_dir), what="first")
            await reloaded(env, ship(otlp=second.url))  # re-pointed
            await calls(env, 10)
            await wait_for(lambda: has_everything(second.bodies(), audit_dir), what="second")
            assert len(first.bodies()) < len(audit_lines(audit_dir))  # nothing more there
            await reloaded(env, ship(otlp=""))  # removed
            kept = cursor_file(audit_dir, "otlp").read_bytes()
            await calls(env, 10)
            await wait_for(lambda: has_everything(journal.messages(), audit_dir), what="journal")
            assert len(second.bodies()) < len(audit_lines(audit_dir))
            assert cursor_file(audit_dir, "otlp").read_bytes() == kept
            assert load_cursor(cursor_file(audit_dir, "otlp"), second.url).at.seq > 0
        # The journal, configured throughout, got every record once, in order.
        assert journal.messages() == audit_lines(audit_dir)
    finally:
        journal.stop()
        await first.stop()
        await second.stop()


async def test_shipping_turned_off_at_reload_stops_its_process(home: Paths, tmp_path: Path) -> None:
    journal = JournalReceiver(tmp_path / "journal.socket")
    journal.start()
    try:
        async with open_env(home, journald_at(journal.path)) as env:
            await calls(env, 5)
            await wait_for(lambda: has_everything(journal.messages(), home.audit_dir))
            child = env.server.shipping.child
            assert child is not None and child.poll() is None
            await reloaded(env, ship(journald=False))
            await wait_for(lambda: child.poll() is not None, what="the shipping process to end")
            await wait_for(lambda: env.server.shipping.child is None, what="no other one")
            await calls(env, 5)
            assert len(journal.messages()) < len(audit_lines(home.audit_dir))
    finally:
        journal.stop()


async def test_a_shipping_process_that_dies_is_started_again(home: Paths) -> None:
    """Killed (SIGKILL: nothing of its own runs) while its receiver refuses: a new one
    starts from the cursor, and every record arrives once, in order."""
    receiver = OtlpReceiver()
    await receiver.start()
    receiver.answer = 503
    try:
        async with open_env(home, ship(otlp=receiver.url)) as env:
            await calls(env, 10)
            path = cursor_file(home.audit_dir, "otlp")
            await wait_for(lambda: load_cursor(path, receiver.url).error is not None)
            killed = env.server.shipping.child
            assert killed is not None
            killed.kill()
            await wait_for(
                lambda: env.server.shipping.child not in (None, killed), what="a new process"
            )
            receiver.answer = 200
            await calls(env, 5)
            await wait_for(lambda: has_everything(receiver.bodies(), home.audit_dir))
    finally:
        await receiver.stop()


def test_a_second_stop_closes_nothing_twice(tmp_path: Path) -> None:
    """The server's stop may run twice; the wake-up pipe's fds are closed once, so a number
    another file of the process holds by then is never closed under it."""
    import os

    from blindkey.audit.ship.process import Shipping
    from blindkey.config.outputs import ShipSettings

    shipping = Shipping(tmp_path, ShipSettings())
    shipping.start()
    shipping.stop()
    reused = os.open(os.devnull, os.O_RDONLY)  # takes the lowest free number: a pipe's
    try:
        shipping.stop()
        shipping.wake()
        os.fstat(reused)  # still open
    finally:
        os.close(reused)
