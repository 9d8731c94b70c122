"""User mistakes end as one clear line and exit code 2, never as a traceback.

Every exception a user can fix (bad flag, missing file, wrong checkpoint) derives from ``UserError``; the
entry scripts wrap their ``main`` with ``cli_main`` so such errors print ``error: <what> ; <fix>`` and exit 2.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import time
from collections.abc import Callable

RANK_ERROR_DELAY_S = 3.0


class UserError(Exception):
    """An error the user can fix; its message names the problem and the fix.

    ``exit_code`` / ``label``: how ``cli_main`` ends the process (a preempted run exits 143 with "stopped: ...").
    """

    exit_code = 2
    label = "error"


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
        rank = os.environ.get("RANK", "0")
        if rank != "0":
            # Under torchrun every rank usually hits the same mistake: rank 0 says it and exits first (torchrun
            # then stops the others, so the line appears once); a mistake of this rank alone is still printed.
            time.sleep(RANK_ERROR_DELAY_S)
        print(f"{e.label}{'' if rank == '0' else f' (rank {rank})'}: {one_line(e)}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as e:
        if e.errno not in USER_OS_ERRORS:
            raise
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)


# OS errors a user causes and fixes (a path too long, no permission, a full or read-only disk): one line, exit 2
USER_OS_ERRORS = {errno.ENAMETOOLONG, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT}


def os_error_line(e: OSError) -> str:
    """``<path>: <reason>`` with a long path shortened (a 5,000-character path would fill the terminal)."""
    name = str(e.filename) if e.filename is not None else "a file"
    if len(name) > 120:
        name = f"{name[:60]}...{name[-40:]} ({len(name)} characters)"
    hint = {errno.ENAMETOOLONG: "; use shorter file and folder names",
            errno.ENOSPC: "; free some disk space", errno.EDQUOT: "; free some disk space"}.get(e.errno, "")
    return f"{name}: {e.strerror}{hint}"


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose command-line mistakes (misspelt flag, ``--iters abc``, missing ``--path``) are a
    ``UserError``: one ``error: ...`` line and exit 2 through ``cli_main``, instead of the usage dump."""

    def error(self, message: str):  # type: ignore[override]
        command = self.prog if self.prog.startswith("python") else f"python {self.prog}"
        raise UserError(f"{' '.join(message.split())}; see `{command} --help`")
