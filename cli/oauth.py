"""`blindkey oauth login NAME`: a refresh token into blindkey without pasting it, by the
authorisation-code flow with PKCE and a loopback redirect (RFC 8252) or, with
--device-url, the device flow (RFC 8628); stored as `secrets set --kind oauth2` stores."""

from __future__ import annotations

import argparse
import sys

from blindkey.cli.approvals import approver_code, exit_for_refusal
from blindkey.config.arguments import Subcommands, action_group, positive
from blindkey.config.console import say
from blindkey.config.paths import Paths


def _announce(text: str) -> None:
    # The URL and the code are for the person at the terminal; stdout stays the result.
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


@exit_for_refusal
def cmd_oauth_login(paths: Paths, args: argparse.Namespace) -> int:
    from blindkey.broker.credentials.device import device_flow
    from blindkey.broker.credentials.login import Client, authorization_code
    from blindkey.broker.credentials.presets import endpoints
    from blindkey.broker.secrets_ops import NewSecret, check_name, store_secret

    check_name(args.name)
    given = endpoints(args.preset, auth_url=args.auth_url, token_url=args.token_url,
                      device_url=args.device_url, scope=args.scope, hosts=args.host,
                      device=args.device)  # fmt: skip
    client = Client(given.token_url, args.client_id, given.auth_url, given.scope,
                    given.device_url)  # fmt: skip
    if client.device_url:
        token = device_flow(client, _announce)
    else:
        token = authorization_code(
            client, _announce, open_browser=not args.no_browser, timeout=args.timeout
        )
    credential = {"token_url": client.token_url, "client_id": args.client_id,
                  "grant": "refresh_token"}  # fmt: skip
    if client.scope:
        credential["scope"] = client.scope
    new = NewSecret(args.name, env=args.env, hosts=list(given.hosts), kind="oauth2",
                    credential=credential, by=args.by, code=args.code)  # fmt: skip
    stored = store_secret(paths, new, lambda: token)
    hosts = ", ".join(str(h) for h in stored.policy.hosts) or "any allowlisted host"
    say(
        f"stored {stored.name} in {stored.env}: an oauth2 refresh token; the proxy injects "
        f"access tokens from {client.token_url} (which must be on the allowlist); hosts: {hosts}"
    )
    return 0


def add_commands(sub: Subcommands) -> None:
    actions = action_group(
        sub,
        "oauth",
        help="get an OAuth2 refresh token into blindkey by logging in (no pasting)",
        description="An oauth2 secret holds a refresh token from which the broker fetches "
        "access tokens. `oauth login` gets one by logging in as the user would in any app.",
    )
    p = actions.add_parser(
        "login",
        help="log in at an authorisation server and store the refresh token as NAME",
        description="Prints a URL (and opens a browser unless --no-browser): allow access "
        "there, the browser comes back to a listener on 127.0.0.1, and blindkey exchanges "
        "the code (PKCE, S256) for a refresh token, which it stores as an oauth2 secret "
        "without showing it. With --device-url instead: open the URL it prints on any "
        "device and type the code; blindkey polls until you allow (RFC 8628). Then: "
        "X-AS-Inject-Bearer: NAME injects a fresh access token.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "--preset",
        metavar="NAME",
        help="github, google or microsoft: their authorisation, token and device endpoints, "
        "default scopes (github: 'repo read:user'; google: 'openid email profile', offline "
        "access; microsoft: 'offline_access User.Read', tenant 'common') and API host "
        "(api.github.com, www.googleapis.com, graph.microsoft.com); a flag given as well wins",
    )
    p.add_argument(
        "--device",
        action="store_true",
        help="with --preset: log in with a code (the preset's device endpoint), no redirect",
    )
    p.add_argument("--auth-url", metavar="URL", help="the authorisation endpoint (browser)")
    p.add_argument("--token-url", metavar="URL", help="the token endpoint (unless --preset)")
    p.add_argument("--client-id", metavar="ID", required=True, help="the OAuth client's id")
    p.add_argument("--scope", metavar="S", help="the scopes to ask for, space-separated")
    p.add_argument(
        "--device-url",
        metavar="URL",
        help="the device authorisation endpoint: log in with a code instead of a redirect",
    )
    p.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="HOST",
        help="bind the secret to this API host, as `secrets set --host` (repeatable; "
        "default with --preset: its API host)",
    )
    p.add_argument("--env", help="environment (default: the active one)")
    p.add_argument("--no-browser", action="store_true", help="only print the URL; open no browser")
    p.add_argument(
        "--timeout",
        type=positive,
        default=300,
        metavar="SECONDS",
        help="how long to wait for the browser to come back (default 300)",
    )
    approver_code(p)
    p.set_defaults(handler=cmd_oauth_login)
