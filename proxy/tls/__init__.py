"""Proxy mode: the local CA, leaf certificates, and the CONNECT entry point."""
