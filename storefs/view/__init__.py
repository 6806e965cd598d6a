"""The providers' key space as the core sees it: cached (dircache), watched (health), kept fresh
in the background (refresh), several providers merged into one (merge), composed by RemoteView.

Locks: DirCache's, ProviderHealth's and Refresh's each guard their own dicts only; none is held
while another is taken or while a provider is called, so they have no order.
"""

from .dircache import DirCache
from .health import ProviderHealth
from .merge import provider_order, walk_merged
from .refresh import Refresh
from .remote import RemoteView
from .tunables import ViewTunables

__all__ = ["DirCache", "ProviderHealth", "Refresh", "RemoteView", "ViewTunables", "provider_order", "walk_merged"]
