"""shardkit: keep an LLM fine-tuning pipeline's training data healthy.

The library is the product; the `shardkit` command is one client of it::

    import shardkit
    result = shardkit.split(["big.jsonl"], "shards/", shardkit.SplitOptions(max_records=50_000))
    print(result.manifest["totals"])
"""

__version__ = "0.1.0"

from .core.errors import (  # noqa: E402
    ConflictError,
    DataError,
    InputError,
    Interrupted,
    ShardkitError,
    UsageError,
)

# The rest is imported on first use, so `shardkit --help` or `shardkit queue claim` does not
# pay for the split pipeline and the validator (startup time matters to scripts and cron).
_LAZY = {
    "regenerate_manifest": ("store.manifest", "regenerate"),
    "verify": ("store.manifest", "verify"),
    "SplitOptions": ("pipeline.shard", "SplitOptions"),
    "SplitResult": ("pipeline.shard", "SplitResult"),
    "split": ("pipeline.driver", "split"),
    "Queue": ("queue.state", "Queue"),
    "run_pipeline": ("pipeline.run", "run_pipeline"),
    "PipelineOptions": ("pipeline.transform", "PipelineOptions"),
    "find_overlap": ("pipeline.overlap", "find_overlap"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'shardkit' has no attribute {name!r}")


__all__ = [
    "ConflictError",
    "DataError",
    "InputError",
    "Interrupted",
    "PipelineOptions",
    "Queue",
    "ShardkitError",
    "SplitOptions",
    "SplitResult",
    "UsageError",
    "__version__",
    "find_overlap",
    "regenerate_manifest",
    "run_pipeline",
    "split",
    "verify",
]
