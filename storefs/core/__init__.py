"""The core of storefs: the providers' keys overlaid with the journal, in small parts behind one facade.

Nothing here knows FUSE or boto3: paths come in as keys, failures leave as storefs.errors
exceptions. storefs/daemon.py wires the parts (build_core); storefs/fs.py sees only the
MountCore protocol. The lock order is at the top of core/state.py.
"""

from .facade import Core, CoreParts
from .protocol import MountCore
from .types import TRUSTED, Attr, Caller, Listing

__all__ = ["TRUSTED", "Attr", "Caller", "Core", "CoreParts", "Listing", "MountCore"]
