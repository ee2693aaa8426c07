"""Two nginx instances: the small-response upstream, and the proxy that injects the header.

Each runs one worker, as blindkey and the forwarder run one event loop, so a ratio
compares one core's worth of work with one core's worth of work.
"""

from __future__ import annotations

import os
from pathlib import Path

from bench.tools import BenchError, Service, free_port, wait_port
from bench.upstream import SMALL

COMMON = """\
worker_processes 1;
{user}
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; multi_accept on; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
  keepalive_timeout 75s;
  keepalive_requests 10000000;
  tcp_nodelay on;
{body}
}}
"""

UPSTREAM_SERVER = """\
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location = /small {{
      default_type application/json;
      return 200 '{small}';
    }}
  }}
"""

# /small goes to the nginx upstream; /sse and /big to the aiohttp one, unbuffered so
# events and bytes pass as they come (blindkey and the forwarder never buffer either).
PROXY_SERVER = """\
  upstream small_up {{ server 127.0.0.1:{small_port}; keepalive 512;
                       keepalive_requests 10000000; keepalive_timeout 75s; }}
  upstream stream_up {{ server 127.0.0.1:{stream_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Authorization "Bearer {bearer}";
    location = /small {{ proxy_pass http://small_up; }}
    location / {{
      proxy_pass http://stream_up;
      proxy_buffering off;
      proxy_buffer_size 256k;
      proxy_buffers 4 256k;
      proxy_busy_buffers_size 256k;
      proxy_read_timeout 120s;
    }}
  }}
"""


def _start(nginx: str, prefix: Path, name: str, body: str, port: int) -> Service:
    prefix.mkdir(parents=True, exist_ok=True)
    # A root master hands its workers to `nobody`, who could not write the temp paths.
    user = "user root;" if os.geteuid() == 0 else ""
    config = prefix / "nginx.conf"
    config.write_text(COMMON.format(user=user, prefix=prefix, body=body))
    service = Service(name, [nginx, "-p", str(prefix), "-c", str(config)])
    try:
        wait_port(port)
    except BenchError as exc:
        service.stop()
        log_file = prefix / "error.log"
        detail = log_file.read_text()[-800:] if log_file.exists() else ""
        raise BenchError(f"{name} did not start: {service.stderr_tail()} {detail}") from exc
    return service


def start_upstream(nginx: str, prefix: Path) -> tuple[Service, int]:
    port = free_port()
    body = UPSTREAM_SERVER.format(port=port, small=SMALL.decode())
    return _start(nginx, prefix / "upstream", "nginx-upstream", body, port), port


def start_proxy(
    nginx: str, prefix: Path, small_port: int, stream_port: int, bearer: str
) -> tuple[Service, int]:
    port = free_port()
    body = PROXY_SERVER.format(
        port=port, small_port=small_port, stream_port=stream_port, bearer=bearer
    )
    return _start(nginx, prefix / "proxy", "nginx-proxy", body, port), port
