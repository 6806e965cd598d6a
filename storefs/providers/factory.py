"""Build providers from their config sections."""

from __future__ import annotations

from ..config import Config, LocalProviderConfig
from .base import Provider


def make_provider(pcfg: object) -> Provider:
    """One provider instance for one `providers.NAME` section."""
    if isinstance(pcfg, LocalProviderConfig):
        from .local import LocalProvider
        return LocalProvider(pcfg.name, pcfg.base_path, create=pcfg.create, create_parents=pcfg.create_parents)
    from .s3 import S3Provider  # imported only when configured: boto3 is slow to import
    return S3Provider(pcfg)


def make_providers(cfg: Config) -> dict[str, Provider]:
    return {name: make_provider(p) for name, p in cfg.providers.items()}
