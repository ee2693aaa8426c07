"""Computed credentials: what a secret injects when its stored value is not the value itself
(an OAuth2 refresh token or client secret, a GitHub App's private key, AWS keys to sign with)."""
