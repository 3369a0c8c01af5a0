"""Bridges from mixdata's shards to other loaders, each behind an optional extra.

- `mixdata.integrations.energon`: Megatron-Energon (`pip install mixdata[energon]`).

The core never imports these modules.
"""
