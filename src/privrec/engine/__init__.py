"""Distributed private training on Ray (the ``[ray]`` extra), over data that does not fit one machine.

``RayEngine(...).fit(model, "shards/")`` trains :class:`~privrec.models.DPALS`,
:class:`~privrec.models.DPPopularity` or :class:`~privrec.models.DPEASE` — the same classes,
mechanisms and guarantees as one machine — over a user-sharded Parquet directory
(:func:`write_user_shards` makes one). See ``docs/scale.md``.

Modules: :mod:`~privrec.engine.parquet` (the data layout, reader and writer; no Ray needed),
:mod:`~privrec.engine.partition` (one worker's users and partial sums),
:mod:`~privrec.engine.ray_engine` (actors, tree reduce, failures),
:mod:`~privrec.engine.fitting` (the driver's side of each model),
:mod:`~privrec.engine.flower_sim` (FederatedMF and federated DPALS on Flower's simulation engine).
"""

from __future__ import annotations

from privrec.engine.parquet import ParquetSource, user_shard, write_user_shards
from privrec.engine.partition import PolicyFilter
from privrec.engine.ray_engine import RayEngine

__all__ = ["ParquetSource", "PolicyFilter", "RayEngine", "user_shard", "write_user_shards"]
