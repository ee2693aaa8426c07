"""The daemon agents talk to: request protocol, injection, egress guard, redaction."""
