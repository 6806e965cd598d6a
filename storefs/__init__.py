"""storefs: an artifact store (local folder or S3 bucket) mounted as a directory."""

__version__ = "0.1.0"
