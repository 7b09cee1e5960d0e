"""``engram inspect``: what an Engram-bearing file or folder holds, whether its layout is
consistent, and which engines load it as is (reads headers only)."""
