"""What a record is: kinds and their validation, JSON Schema, conversion to chat, tokens.
Works on one record (or one block of lines) at a time; imports only `shardkit.core`."""
