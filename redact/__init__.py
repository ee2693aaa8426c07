"""Every encoding of every secret value, kept out of what flows back to an agent: the
redactor (used by the proxy's relay and the broker's env channel) and its normalised views."""
