"""The record pipeline: sources -> check -> convert -> filter -> route -> order -> sink ->
publish, and the executors that run it (inline, local process pool, Ray). Imports
`shardkit.records`, `shardkit.store` and `shardkit.core`."""
