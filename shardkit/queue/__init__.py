"""The file queue: state folders, item records, leases, the journal, ingest, doctor,
rotation and settings. Imports `shardkit.pipeline.transform`, `shardkit.records`, `shardkit.store`
and `shardkit.core`."""
