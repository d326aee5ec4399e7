"""The `shardkit` command: parse arguments, call the library, render, map errors to exit codes.

Nothing here decides anything about data; every command is one library call. One module
per command group (data, queue); `common` holds the app and what they share.
"""

from shardkit.cli import data, queue  # noqa: F401  (registers the commands on the app)
from shardkit.cli.common import app, main

__all__ = ["app", "main"]
