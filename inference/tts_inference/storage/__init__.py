"""Storage: the bucket (``bucket``) and the local files on the cache volume (``files``).

Everything that reads or writes the bucket or the shared cache goes through
these two modules: sync, publish, the flash_attn installer, voices and jobs.
"""
