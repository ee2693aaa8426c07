"""The openai SDK as an agent would run it: its HTTP client routed through blindkey, the key
injected by name, chat completions whole and streamed, the echoed key redacted."""

from __future__ import annotations

import hashlib

import httpx
import openai

from blindkey.config.paths import Paths
from tests.proxy.conftest import SECRET, open_env


class ViaBlindkey(httpx.AsyncBaseTransport):
    """Sends each request to the proxy, naming its real URL and the secret to inject."""

    def __init__(self, proxy_port: int, token: str) -> None:
        self.proxy = httpx.URL(f"http://127.0.0.1:{proxy_port}/proxy")
        self.token = token
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.headers["X-AS-Target-URL"] = str(request.url)
        request.headers["X-AS-Inject-Bearer"] = "GITHUB_TOKEN"
        request.headers["X-AS-Agent-Token"] = self.token
        request.headers["Host"] = self.proxy.netloc.decode()
        request.url = self.proxy
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_chat_completions_whole_and_streamed(home: Paths) -> None:
    async with open_env(home) as env:
        http = httpx.AsyncClient(transport=ViaBlindkey(env.server.port, env.token))
        # The SDK's own key is a placeholder: blindkey replaces the Authorization it sets.
        client = openai.AsyncOpenAI(
            api_key="placeholder",
            base_url=f"{env.base}/v1",
            # openai annotates http_client as httpx2.AsyncClient only, yet accepts an
            # httpx.AsyncClient at runtime (openai._httpx2.is_legacy_httpx_async_client).
            http_client=http,  # type: ignore[arg-type]
            max_retries=0,
        )
        try:
            raw = await client.chat.completions.with_raw_response.create(
                model="gpt-test", messages=[{"role": "user", "content": "hi"}]
            )
            whole = raw.parse()
            sent = hashlib.sha256(f"Bearer {SECRET}".encode()).hexdigest()
            assert raw.headers["X-Echo-Authorization-Sha256"] == sent
            assert whole.choices[0].message.content == (
                "You called with Bearer [REDACTED:GITHUB_TOKEN]"
            )

            stream = await client.chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            words = [chunk.choices[0].delta.content async for chunk in stream]
            assert words == ["You", " called", " with ", "Bearer [REDACTED:GITHUB_TOKEN]"]
        finally:
            await client.close()
        assert SECRET not in repr(whole) + "".join(w or "" for w in words)
