"""DICOM networking: the Storage SCP that receives echo loops, its contexts and its checks."""

from pacs_agent.dicom.scp import StorageSCP, start_storage_scp

__all__ = ["StorageSCP", "start_storage_scp"]
