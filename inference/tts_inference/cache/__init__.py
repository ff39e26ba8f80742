"""The warm cache: a B2-safe S3 client, locked and verified sync, publish."""
