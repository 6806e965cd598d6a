"""Backends behind one small interface: a local folder, an S3-compatible bucket."""

from .base import ObjectInfo, ObjectMeta, Provider

__all__ = ["ObjectInfo", "ObjectMeta", "Provider"]
