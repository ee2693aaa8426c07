"""Credentials that are computed from what the vault holds, not copied from it."""
