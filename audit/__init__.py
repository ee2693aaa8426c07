"""Audit records: who used which secret, where, when, and what came of it."""
