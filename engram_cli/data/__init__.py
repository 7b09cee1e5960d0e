"""Bundled package data: the demo Engram model (demo-model/) and its held-out eval suites (suites/)."""
