"""Where results are published: the manifest model, SHA256SUMS, verify, and publication to
a local folder or an object store (each file atomic, manifest last). Imports only
`shardkit.core`."""
