"""DICOM networking: the Storage SCP that receives echo loops, its contexts and its checks.

``StorageSCP`` and ``start_storage_scp`` are loaded on first use rather than at package import:
``pacs_agent.ingest`` needs this package's small modules (``validate``, ``contexts``) while
``scp`` needs ``ingest``, so an eager import here made ``import pacs_agent.ingest`` fail when
it came first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pacs_agent.dicom.scp import StorageSCP, start_storage_scp

__all__ = ["StorageSCP", "start_storage_scp"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from pacs_agent.dicom import scp

        return getattr(scp, name)
    raise AttributeError(f"module 'pacs_agent.dicom' has no attribute {name!r}")
