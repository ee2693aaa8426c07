"""The redactor's own rate on the inputs that cost it most: escape-dense bodies (every
byte a `%41` or `\\u0041`, which the views decode one Python call per escape) beside plain
text, streamed in 64 KiB chunks as the relay feeds them. `python -m bench.redaction`."""

from __future__ import annotations

import json
import time

from blindkey.redact.redactor import Redactor

MIB = 2**20
CHUNK = 2**16
INPUTS = {"percent_dense": b"%41", "json_escape_dense": b"\\u0041", "plain": b"abcdefgh"}
SECRETS = {
    "GITHUB_TOKEN": "ghp_Zx9Q7vLm2Kp4Rt8Wn3Yb6Hc1Jd5Fs0Ga",
    "STRIPE_KEY": "sk_live_4eC39HqLyjWDarjtT1zdp7dc0000",
    "BASIC_PAIR": "octocat:s3cr3t-Passw0rd-Value",
}


def rates(mib: int = 4, repeats: int = 3) -> dict[str, float]:
    """MiB/s of each input through one stream, the best of `repeats` runs."""
    redactor = Redactor(SECRETS)
    out: dict[str, float] = {}
    for name, unit in INPUTS.items():
        data = unit * (mib * MIB // len(unit))
        best = float("inf")
        for _ in range(repeats):
            stream = redactor.stream()
            began = time.perf_counter()
            for start in range(0, len(data), CHUNK):
                stream.feed(data[start : start + CHUNK])
            stream.finish()
            best = min(best, time.perf_counter() - began)
        out[name] = round(len(data) / best / MIB, 1)
    return out


if __name__ == "__main__":
    print(json.dumps(rates()))
