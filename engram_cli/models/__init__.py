"""Views of Engram-bearing models (adapters), the reference Engram model, and the demo model.

Import submodules directly (``engram_cli.models.reference``, ``.views``, ``.loading``); this
package import stays light (no torch).
"""
