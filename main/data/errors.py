"""The one error type of the file-backed datasets.

Kept in its own module (importing only ``main.errors``) so that the loaders, ``main.data`` and the
``main.data.check`` tool can all raise and catch it without import cycles.
"""

from __future__ import annotations

from ..errors import UserError


class DatasetError(UserError):
    """A missing or malformed dataset file; the one-line message names the file and the fix."""
