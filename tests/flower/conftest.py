"""Without flwr (the ``[federated]`` extra) the Flower tests skip; the helper module is not collected."""

from __future__ import annotations

import importlib.util

collect_ignore = [] if importlib.util.find_spec("flwr") else ["local.py"]
