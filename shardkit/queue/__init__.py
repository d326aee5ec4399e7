"""The file queue: state folders, item records, leases, the journal, ingest, doctor,
rotation and settings. Imports `shardkit.pipeline.transform`, `shardkit.records`, `shardkit.store`
and `shardkit.core`."""


def __getattr__(name: str):
    """`from shardkit.queue import Queue`, loaded on first use (the CLI starts faster)."""
    if name in ("Queue", "Claimed", "NoClaim", "NO_CLAIM"):
        from shardkit.queue import state

        return getattr(state, name)
    raise AttributeError(f"module 'shardkit.queue' has no attribute {name!r}")
