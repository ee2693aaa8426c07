"""The `blindkey` command: the whole tree (main.py) and one module per command group, each
handler a thin call into a use case of its package."""
