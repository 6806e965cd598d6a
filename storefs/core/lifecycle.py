"""Starting and stopping the core's threads, and hearing of changes other programs make to the providers."""

from __future__ import annotations

import functools
import logging
import threading

from ..cache.datafiles import DataFiles
from ..cache.eviction import Evictor
from ..cache.journal import State
from ..cache.uploader import Uploader
from .files import Files
from .multipart import OpenUploads
from .state import CoreState
from .tree import Tree
from .writeback import Writeback

log = logging.getLogger(__name__)


class Lifecycle:
    """The threads of a mount: uploaders, evictor, listing refresh, provider watchers."""

    def __init__(self, tree: Tree, state: CoreState, data: DataFiles, uploader: Uploader, evictor: Evictor,
                 writeback: Writeback, files: Files, multipart: OpenUploads) -> None:
        self.tree = tree
        self.state = state
        self.data = data
        self.uploader = uploader
        self.evictor = evictor
        self.writeback = writeback
        self.files = files
        self.multipart = multipart

    def start(self) -> None:
        """Start the uploader threads (called from FUSE init, never before a fork); a read-only
        mount uploads nothing, so pending rows of an earlier mount wait for a writable one."""
        read_only = self.tree.settings.read_only
        self.data.start()
        self.multipart.start()  # takes the uploads an earlier run left open before this run opens any
        if not read_only:
            self.uploader.start(self.writeback.jobs())
        self.evictor.start()
        self.tree.remote.start()
        # off the FUSE init thread: a watcher walks its folder, and a link planted there that points
        # into this very mount would make it wait on the kernel, which waits for init to return
        threading.Thread(target=self._watch_providers, name="storefs-watch", daemon=True).start()
        if not read_only:
            with self.state.lock:  # parked changes wait for `storefs retry`
                pending = [e.key for e in self.state.index.pending() if e.state != State.PARKED]
            for key in pending:
                self.uploader.schedule(key, 0.0)

    def _watch_providers(self) -> None:
        """Hear of changes other programs make to the providers (where a provider can tell)."""
        for name, p in self.tree.providers.items():
            try:
                p.watch(functools.partial(self.tree.changed_outside, name))
            except Exception:
                log.exception("watching provider %s for outside changes failed", name)

    def stop(self) -> None:
        """Stop every thread; rows not uploaded stay in the journal."""
        self.uploader.stop()
        self.multipart.stop()  # after the uploaders: aborts what they left open
        self.evictor.stop()
        self.tree.remote.stop()
        self.files.stop()
        self.data.stop()
        self.state.index.journal.apply()  # what the threads recorded last, in SQLite before anyone opens it again
