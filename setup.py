"""The one compiled part: the record gate over raw JSONL bytes (shardkit/records/chatgate.c).

It is optional. Without a C compiler the install still succeeds (with a warning) and
`validate` runs the same checks in Python, about twice as slow on chat data.
`python -c "import shardkit.records.chatgate"` tells whether it was built;
SHARDKIT_PURE_PYTHON=1 turns it off for one run."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "shardkit.records.chatgate",
            sources=["shardkit/records/chatgate.c"],
            extra_compile_args=["-O2"],
            optional=True,  # no compiler: a warning, and the pure-Python gate
        )
    ]
)
