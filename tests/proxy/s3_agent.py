"""An agent's program that uploads to S3 with botocore, in its own process as an agent's
program would be: told blindkey as its HTTPS proxy, blindkey's CA, and only the placeholder
as its access key id. Prints one JSON line: the HTTP status and S3's error code, if any.

    python s3_agent.py MODE PROXY ENDPOINT CA_FILE PLACEHOLDER SIZE

MODE: `trailer` (botocore's default: STREAMING-UNSIGNED-PAYLOAD-TRAILER), `text` (the same,
with a text Content-Type, which proxy mode reads for placeholders otherwise), `when-required`
(no checksum asked: UNSIGNED-PAYLOAD), `signed-chunks` (STREAMING-AWS4-HMAC-SHA256-PAYLOAD,
which botocore does not send: made here as the AWS SDKs for Java and JavaScript make it),
`signed-chunks-trailer` (the same declared as STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER),
`bad-chunks` (signed chunks, the first running on past its size).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
from typing import Any

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from botocore.httpsession import URLLib3Session
from botocore.session import get_session

# What the program holds besides the placeholder: it signs nothing that reaches AWS.
DUMMY_SECRET = "not-the-secret-key-held-by-blindkey"
REGION = "eu-west-1"
CHUNK = 64 * 1024
TIMEOUT = 10.0  # well under a test's: a proxy that hangs fails the call, not the test run


def content(size: int) -> bytes:
    return bytes(range(256)) * (size // 256) + b"x" * (size % 256)


def sdk_put(mode: str, proxy: str, endpoint: str, ca: str, key_id: str, size: int) -> Any:
    checksums = {"request_checksum_calculation": "when_required"} if mode == "when-required" else {}
    config = Config(
        proxies={"https": proxy}, s3={"addressing_style": "path"}, retries={"max_attempts": 1},
        connect_timeout=TIMEOUT, read_timeout=TIMEOUT, **checksums,
    )  # fmt: skip
    client = get_session().create_client(
        "s3", region_name=REGION, endpoint_url=endpoint, config=config, verify=ca,
        aws_access_key_id=key_id, aws_secret_access_key=DUMMY_SECRET,
    )  # fmt: skip
    try:
        typed = {"ContentType": "text/csv"} if mode == "text" else {}
        client.put_object(Bucket="bucket", Key=f"{mode}.bin", Body=content(size), **typed)
        return {"status": 200}
    except ClientError as exc:
        meta = exc.response["ResponseMetadata"]
        return {"status": meta["HTTPStatusCode"], "error": exc.response["Error"]}
    finally:
        client.close()


def _chunk_signature(key: bytes, when: str, scope: str, previous: str, chunk: bytes) -> str:
    empty = hashlib.sha256(b"").hexdigest()
    text = f"AWS4-HMAC-SHA256-PAYLOAD\n{when}\n{scope}\n{previous}\n{empty}\n"
    text += hashlib.sha256(chunk).hexdigest()
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


class StreamingSigner(S3SigV4Auth):  # type: ignore[misc]  # botocore has no type hints
    """botocore's S3 signer, with the payload declared as signed chunks (it hashes the body
    otherwise, and has no signer of its own for chunks)."""

    declared = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"

    def payload(self, request: AWSRequest) -> str:
        return self.declared


def signed_chunks(mode: str, proxy: str, endpoint: str, ca: str, key_id: str, size: int) -> Any:
    data = content(size)
    chunks = [data[at : at + CHUNK] for at in range(0, len(data), CHUNK)] + [b""]
    encoded_length = sum(len(f"{len(c):x};chunk-signature=") + 64 + 4 + len(c) for c in chunks)
    headers = {
        "Content-Encoding": "aws-chunked", "X-Amz-Decoded-Content-Length": str(size),
        "X-Amz-Content-SHA256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "Content-Length": str(encoded_length),
    }  # fmt: skip
    request = AWSRequest("PUT", f"{endpoint}/bucket/signed-chunks.bin", headers=headers)
    signer = StreamingSigner(Credentials(key_id, DUMMY_SECRET), "s3", REGION)
    if mode == "signed-chunks-trailer":
        signer.declared += "-TRAILER"
    signer.add_auth(request)
    authorization = request.headers["Authorization"]
    scope = authorization.split("Credential=", 1)[1].split(",", 1)[0].split("/", 1)[1]
    when, previous = request.headers["X-Amz-Date"], authorization.rsplit("Signature=", 1)[1]
    key = ("AWS4" + DUMMY_SECRET).encode()
    for part in scope.split("/"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    body = b""
    for chunk in chunks:
        previous = _chunk_signature(key, when, scope, previous, chunk)
        body += f"{len(chunk):x};chunk-signature={previous}\r\n".encode() + chunk + b"\r\n"
    assert len(body) == encoded_length
    if mode == "bad-chunks":  # the first chunk runs on past its size (the length holds)
        first_end = body.index(b"\r\n") + 2 + CHUNK
        body = body[:first_end] + b"!!" + body[first_end + 2 :]
    request.data = body
    session = URLLib3Session(verify=ca, proxies={"https": proxy}, timeout=TIMEOUT)
    try:
        response = session.send(request.prepare())
        return {"status": response.status_code, "body": response.content.decode()}
    finally:
        session.close()


def main() -> None:
    mode, proxy, endpoint, ca, key_id, size = sys.argv[1:7]
    if mode in ("signed-chunks", "signed-chunks-trailer", "bad-chunks"):
        result = signed_chunks(mode, proxy, endpoint, ca, key_id, int(size))
    else:
        result = sdk_put(mode, proxy, endpoint, ca, key_id, int(size))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
