"""The progress-callback protocol shared by domain code.

Domain functions take ``progress: ProgressCallback | None`` and call it with
``(completed, total, description)``; the CLI decides whether and how to render it.
"""

from __future__ import annotations

from typing import Callable, Optional

ProgressCallback = Callable[[float, Optional[float], str], None]

