"""The script's passkey calls: relayed to the broker, which makes every challenge and checks
every answer (broker/approvals/passkeys.py). This process passes on what the browser
made and the origin the page is served at; it decides nothing."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from blindkey.broker.approvals.codes import CodeNeeded, CodeRefused
from blindkey.config.errors import BlindkeyError
from blindkey.ui.broker_calls import approvals
from blindkey.ui.handlers import PATHS

MAX_BODY = 64 * 1024


async def _relay(request: web.Request, action: str, *keys: str) -> Any:
    """The broker's result (a dict), or the refusal as the answer to send."""
    body: object = {}
    if request.content_length is not None and request.content_length <= MAX_BODY:
        try:
            body = await request.json()
        except ValueError:
            body = {}
    given = body if isinstance(body, dict) else {}
    params: dict[str, Any] = {key: given.get(key) for key in keys}
    if action.endswith("finish"):
        # The page's origin as the browser sees it (the guard checked Host is ours): the
        # broker holds the assertion's clientDataJSON to it.
        params["origin"] = f"http://{request.host}"
    try:
        return await approvals(request.app[PATHS], action, **params)
    except CodeRefused as exc:
        return web.json_response({"error": exc.code, "message": str(exc)}, status=403)
    except (CodeNeeded, BlindkeyError) as exc:
        return web.json_response({"error": "refused", "message": str(exc)}, status=400)


def _answer(result: Any, message: str = "") -> web.Response:
    if isinstance(result, web.Response):
        return result
    return web.json_response({**result, "message": message.format(**result)})


async def register_begin(request: web.Request) -> web.Response:
    return _answer(await _relay(request, "passkey_register_begin", "approver", "code"))


async def register_finish(request: web.Request) -> web.Response:
    result = await _relay(request, "passkey_register_finish", "approver", "credential")
    return _answer(result, "passkey enrolled for approver {approver}")


async def approve_begin(request: web.Request) -> web.Response:
    return _answer(await _relay(request, "passkey_approve_begin", "request"))


async def approve_finish(request: web.Request) -> web.Response:
    result = await _relay(request, "passkey_approve_finish", "request", "credential")
    return _answer(result, "{secret} approved for {agent} with a passkey")
