"""The providers' key space as the core sees it: cached (dircache), watched (health), kept fresh
in the background (refresh), several providers merged into one (merge), composed by RemoteView."""

from .dircache import DirCache
from .health import ProviderHealth
from .merge import provider_order, walk_merged
from .refresh import Refresh
from .remote import RemoteView
from .tunables import ViewTunables

__all__ = ["DirCache", "ProviderHealth", "Refresh", "RemoteView", "ViewTunables", "provider_order", "walk_merged"]
