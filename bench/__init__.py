"""`make bench`: blindkey side by side with the upstream, nginx and a bare aiohttp forwarder."""
