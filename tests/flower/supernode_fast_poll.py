"""``flower-supernode`` with its fixed idle sleeps cut to POLL seconds (test launcher only).

Flower 1.42's SuperNode loop sleeps a hard-coded 3 s whenever a pull from the SuperLink
returns no message, and 0.5 s between checks for its ClientApp's reply. In the deployment
test every phase (13 of them) ends with such a 3 s pull miss — the node has replied, the
server still waits for the other nodes — so about 40 s of the test were idle sleeps. This
script runs the very same ``flower_supernode`` entry point as the installed executable, with
``time.sleep`` in that one module capped at ``POLL`` seconds; everything else (SuperExec,
``flwr-clientapp`` processes, the REST Fleet API) is unchanged.

If Flower's internals move (no ``time`` attribute in the module), the SuperNode runs unpatched:
slower, still correct.

Usage: ``python supernode_fast_poll.py <flower-supernode arguments>``.
"""

from __future__ import annotations

import sys
import time
from typing import Any

POLL = 0.2


class _CappedTime:
    """The ``time`` module, except that ``sleep`` never waits longer than ``POLL`` seconds."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(min(seconds, POLL))


def main() -> int:
    from flwr.supernode import start_client_internal
    from flwr.supernode.cli import flower_supernode

    if getattr(start_client_internal, "time", None) is time:
        start_client_internal.time = _CappedTime()  # type: ignore[attr-defined]
    sys.argv[0] = "flower-supernode"
    flower_supernode()
    return 0


if __name__ == "__main__":
    sys.exit(main())
