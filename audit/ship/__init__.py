"""Copies of the audit for the places security teams read it: RFC 5424 syslog over TCP or
TLS, and OpenTelemetry logs over HTTP. The audit file is the source; a cursor per
destination says what was delivered (audit/ship/cursor.py)."""
