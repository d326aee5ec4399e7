"""The one compiled part: the chat gate over raw bytes (shardkit/records/_chatscan.c).

It is optional. Without a C compiler the install still succeeds and validate runs the
same checks in Python, only slower (`shardkit doctor`-style note: `python -c "import
shardkit.records._chatscan"` tells whether it was built)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "shardkit.records._chatscan",
            sources=["shardkit/records/_chatscan.c"],
            extra_compile_args=["-O2"],
            optional=True,  # no compiler: a warning, and the pure-Python gate
        )
    ]
)
