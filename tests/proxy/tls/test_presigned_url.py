"""Presigned S3 URLs in proxy mode: botocore's own S3 client, given only the placeholder as
its key id, presigns a GET; the URL carries the placeholder in X-Amz-Credential. blindkey
does not sign query strings again (a presigned URL is made to be handed to someone who does
not go through blindkey): it refuses the call, and never puts the keys into a query."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from botocore.config import Config
from botocore.session import get_session

from tests.proxy.sigv4_oracle import SEEN
from tests.proxy.test_sigv4_proxy_mode import DUMMY_SECRET, Mode, mode

__all__ = ["mode"]  # the fixture, shared with the other proxy-mode SigV4 tests


def _s3(mode: Mode) -> Any:
    proxy = f"http://agent:{mode.env.token}@127.0.0.1:{mode.env.server.port}"
    config = Config(
        proxies={"https": proxy}, s3={"addressing_style": "path"},
        retries={"max_attempts": 1},
    )  # fmt: skip
    return get_session().create_client(
        "s3", region_name="eu-west-1", endpoint_url=mode.url(""), config=config,
        aws_access_key_id=mode.placeholder, aws_secret_access_key=DUMMY_SECRET,
        verify=str(mode.env.paths.ca_cert),
    )  # fmt: skip


async def test_a_presigned_url_with_the_placeholder_is_refused(mode: Mode) -> None:
    client = _s3(mode)
    try:
        url = client.generate_presigned_url(
            "get_object", Params={"Bucket": "bucket", "Key": "k"}, ExpiresIn=60
        )
    finally:
        client.close()
    assert mode.placeholder in url
    seen = len(mode.oracle.app[SEEN])
    process = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--proxy", f"http://127.0.0.1:{mode.env.server.port}",
        "--proxy-user", f"agent:{mode.env.token}", "--noproxy", "",
        "--cacert", str(mode.env.paths.ca_cert), "-w", "\n%{http_code}", url,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await process.communicate()
    body, _, code = out.rpartition(b"\n")
    assert code == b"400" and orjson.loads(body)["error"] == "bad_request"
    assert b"holds AWS keys" in body
    assert len(mode.oracle.app[SEEN]) == seen  # nothing reached the upstream
