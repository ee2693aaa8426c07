"""The daemon agents talk to: request protocol, injection, egress policy, redaction."""
