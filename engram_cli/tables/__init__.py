"""Engram table storage: checkpoint index, readers and writers per format, dtype codecs,
shard policies (row ranges), plans, manifests and verification.

Nothing here prints or exits; functions return typed results and take a progress callback.
"""
