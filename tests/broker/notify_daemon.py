"""A notification daemon for tests: owns org.freedesktop.Notifications on the session bus
of DBUS_SESSION_BUS_ADDRESS (a private one the test started) and prints each Notify call
as a JSON line on stdout; "READY" once it owns the name. Run: python -m
tests.broker.notify_daemon."""

from __future__ import annotations

import json
from typing import Any

from jeepney import MessageType, new_error, new_method_return
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import open_dbus_connection

NAME = "org.freedesktop.Notifications"


def answer(connection: Any, message: Any, notified: int) -> int:
    member = message.header.fields.get(3)  # HeaderFields.member
    if member == "Notify":
        app, _, _, summary, body, _, hints, timeout = message.body
        notified += 1
        print(json.dumps({"app": app, "summary": summary, "body": body,
                          "urgency": int(hints["urgency"][1]) if "urgency" in hints else None,
                          "timeout": timeout}), flush=True)  # fmt: skip
        connection.send(new_method_return(message, "u", (notified,)))
    elif member == "GetCapabilities":
        connection.send(new_method_return(message, "as", (["body", "body-markup"],)))
    elif member == "GetServerInformation":
        connection.send(new_method_return(message, "ssss", ("fake", "tests", "1", "1.2")))
    elif member == "CloseNotification":
        connection.send(new_method_return(message))
    else:
        connection.send(new_error(message, "org.freedesktop.DBus.Error.UnknownMethod"))
    return notified


def main() -> None:
    connection = open_dbus_connection("SESSION")
    reply = connection.send_and_get_reply(message_bus.RequestName(NAME))
    assert reply.body[0] == 1, f"{NAME} is owned already"
    print("READY", flush=True)
    notified = 0
    while True:
        message = connection.receive()
        if message.header.message_type == MessageType.method_call:
            notified = answer(connection, message, notified)


if __name__ == "__main__":
    main()
