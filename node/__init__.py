"""Radnode: a PACS-integrated AI inference node for radiology."""

__version__ = "0.1.0"
