"""shardkit: keep an LLM fine-tuning pipeline's training data healthy.

The library is the product; the `shardkit` command is one client of it::

    import shardkit
    result = shardkit.split(["big.jsonl"], "shards/", shardkit.SplitOptions(max_records=50_000))
    print(result.manifest["totals"])
"""

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    ConflictError,
    DataError,
    InputError,
    Interrupted,
    ShardkitError,
    UsageError,
)
from .manifest import regenerate as regenerate_manifest  # noqa: E402
from .manifest import verify  # noqa: E402
from .shard import SplitOptions, SplitResult, split  # noqa: E402

__all__ = [
    "ConflictError",
    "DataError",
    "InputError",
    "Interrupted",
    "ShardkitError",
    "SplitOptions",
    "SplitResult",
    "UsageError",
    "__version__",
    "regenerate_manifest",
    "split",
    "verify",
]
