"""The node itself: configuration, database, DICOM, jobs, and the ``echo-agent`` command line."""

__version__ = "0.1.0"
