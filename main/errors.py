"""User mistakes end as one clear line and exit code 2, never as a traceback.

Every exception a user can fix (bad flag, missing file, wrong checkpoint) derives from ``UserError``; the
entry scripts wrap their ``main`` with ``cli_main`` so such errors print ``error: <what> ; <fix>`` and exit 2.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """An error the user can fix; its message names the problem and the fix."""


def one_line(error: UserError) -> str:
    """The error's message on one line.

    A ``UserError`` raised inside a DataLoader worker comes back from torch as the same type whose message is
    "Caught ... in DataLoader worker process N." plus the worker's traceback; its own message is the last line.
    """
    lines = [line for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Caught ") and "Traceback" in lines[1]:
        name = f"{type(error).__module__}.{type(error).__qualname__}: "
        lines = [lines[-1].split(name, 1)[-1]]
    return " ".join(" ".join(lines).split())


def cli_main(main: Callable[[list[str] | None], int | None]) -> None:
    try:
        code = main(None)
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
