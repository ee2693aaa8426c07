"""Recorded: no answer without its record. Every call's record is written before its answer
is complete, by `recorded`, the last thing the edge does; a record that cannot be written
takes the answer with it.

(The audit writer's `seal` is its own word: write this record now, not with the others
ending in this turn of the loop.)
"""

from __future__ import annotations

from aiohttp import web

from blindkey.audit.record import AuditRecord
from blindkey.audit.writer import AuditWriter
from blindkey.proxy.errors import ProxyError, error_response


async def recorded(
    audit: AuditWriter,
    record: AuditRecord,
    response: web.StreamResponse | None,
    request: web.BaseRequest,
    *,
    alone: bool = False,
) -> web.StreamResponse | None:
    """`response`, once `record` is written before the answer is complete: a small answer
    is still unsent, a stream still lacks its end (aiohttp writes it once the handler
    returns). So an agent that got a whole answer can count on its record, even if the
    proxy is killed next.
    The records of the calls ending in one turn of the event loop share one write(); a
    call `alone` (no other under way) has its record written at once.

    `response` is None when the handler did not return one (cut by shutdown or a gone
    agent, or a bug). When the record cannot be written, the agent gets no answer without
    one: an unsent answer becomes 503 `audit_unavailable`, a stream is cut.
    """
    if response is None:
        record.cut()
    unwritten = audit.seal(record) if alone else await audit.commit(record)
    if unwritten is None:
        return response
    if response is not None and not response.prepared:
        error = ProxyError(
            "audit_unavailable",
            "blindkey cannot write its audit (disk full or file unwritable); nothing is "
            "injected until it can: retry later",
        )
        unwritten.update(decision="blocked", reason=error.code, status=error.status, bytes_out=0)
        return error_response(error, record.request_id)
    unwritten["complete"] = False
    if request.transport is not None:
        request.transport.abort()
    return response
