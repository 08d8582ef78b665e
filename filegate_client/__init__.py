"""filegate-client: the command-line client of a filegate service (docs/client.md).

Its own module tree: it speaks only HTTP and imports nothing of the server (``app``).
"""
