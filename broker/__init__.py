"""The process that holds secrets and answers the proxy over a Unix socket."""
