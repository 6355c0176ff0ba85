"""Process checks shared by the layers (the publisher lock, the LOG landing's spool files).

Usage:
    >>> import os
    >>> pid_alive(os.getpid())
    True
"""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
