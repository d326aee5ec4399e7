"""Foundations every layer uses: errors with exit codes, fault points, byte-level input
reading (blocks of lines, JSON arrays, object-store URLs) and the file primitives
(atomic write, rename without replacing). Imports the standard library and third-party
packages only, never another shardkit package."""
