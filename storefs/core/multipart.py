"""The multipart uploads storefs opens, noted in the journal while they are open, so that one a `kill -9` cut
short is aborted by the next mount instead of staying in the bucket for good (its parts stored, and billed).

Only the uploads this cache's journal noted are ever aborted, never another client's (no list-and-abort):
s3fs and rclone leave those to a bucket lifecycle rule, and so does storefs.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Mapping

from ..cache.journal import Journal, UploadRecord
from ..errors import CacheFull, NotFound, ProviderError, ProviderUnavailable, StorefsError
from ..providers.base import Provider, UploadLog

log = logging.getLogger(__name__)

#: seconds before aborts a provider did not answer are tried again; the pause doubles up to MAX_RETRY_DELAY
RETRY_DELAY = 30.0
MAX_RETRY_DELAY = 600.0
#: seconds a clean stop waits, at most, for the aborts of the uploads still open (the rest wait for the next mount)
STOP_TIMEOUT = 5.0


class _JournalLog(UploadLog):
    """One provider's UploadLog: its open uploads as rows of the mount's journal."""

    def __init__(self, owner: OpenUploads, provider: str) -> None:
        self._owner = owner
        self._provider = provider

    def started(self, key: str, upload_id: str) -> None:
        self._owner.note(UploadRecord(self._provider, key, upload_id, time.time()))

    def ended(self, key: str, upload_id: str) -> None:
        self._owner.forget(self._provider, upload_id)


class OpenUploads:
    """The open multipart uploads of a mount's providers: noted in its journal from before their first part until
    they end. Those an earlier run left are aborted at start, in the background (the mount never waits on the
    network; a provider that does not answer is tried again later), those still open at a clean stop at the stop."""

    def __init__(self, journal: Journal, providers: Mapping[str, Provider], *, read_only: bool,
                 retry_delay: float = RETRY_DELAY, max_retry_delay: float = MAX_RETRY_DELAY,
                 stop_timeout: float = STOP_TIMEOUT) -> None:
        self._journal = journal
        self._providers = dict(providers)
        self._read_only = read_only
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay
        self._stop_timeout = stop_timeout
        self._lock = threading.Lock()  # protects _accepting and _writable, and orders journal writes against stop
        self._accepting = True  # new uploads may be opened (not once the stop has begun)
        self._writable = True   # the journal may be written (not once stop has returned: it is about to close)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        for name, provider in self._providers.items():
            provider.uploads = _JournalLog(self, name)

    # -- what the providers call ---------------------------------------------------------------
    def note(self, record: UploadRecord) -> None:
        """Commit an upload as open before its first part is sent; ProviderError once the mount is stopping."""
        with self._lock:
            if not self._accepting:
                raise ProviderError(f"{record.provider}: {record.key}: the mount is stopping, no upload starts now")
            self._journal.add_upload(record)

    def forget(self, provider: str, upload_id: str) -> None:
        """Drop the row of an upload that ended; a failure only leaves the row (the next mount finds it gone)."""
        with self._lock:
            if not self._writable:
                return
            try:
                self._journal.remove_upload(provider, upload_id)
            except (sqlite3.Error, CacheFull) as e:
                log.warning("%s: forgetting the ended multipart upload %s failed (%s); the next mount checks it",
                            provider, upload_id, e)

    # -- the lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Abort the uploads an earlier run left open, in the background; before any upload of this run starts,
        so only theirs are taken. A read-only mount sends nothing: they wait for a writable one."""
        if self._read_only:
            return
        left = self._journal.uploads()
        if left:
            self._thread = threading.Thread(target=self._abort_left, args=(left,), name="storefs-multipart",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Open no more uploads and abort those still open (a clean stop leaves none behind), for at most
        stop_timeout; then write the journal no more. Called once the uploaders have stopped."""
        with self._lock:
            self._accepting = False
        self._stopping.set()
        if not self._read_only:
            final = threading.Thread(target=self._abort_open, name="storefs-multipart-stop", daemon=True)
            final.start()
            final.join(self._stop_timeout)
            if final.is_alive():
                log.warning("multipart uploads still open after %.0fs of aborting them at stop: the next mount "
                            "aborts them", self._stop_timeout)
        with self._lock:
            self._writable = False

    # -- aborting -----------------------------------------------------------------------------
    def _abort_left(self, left: list[UploadRecord]) -> None:
        """The start's aborts, then those whose provider did not answer again, less and less often, until stop."""
        aborted, later = self._abort(left)
        log.info("aborted %d multipart uploads an earlier run left unfinished%s", aborted,
                 f"; {len(later)} more once their provider answers" if later else "")
        delay = self._retry_delay
        while later and not self._stopping.wait(delay):
            aborted, later = self._abort(later)
            if aborted:
                log.info("aborted %d more multipart uploads an earlier run left unfinished", aborted)
            delay = min(delay * 2, self._max_retry_delay)

    def _abort_open(self) -> None:
        """Abort every upload the journal holds as open: this run's cut short by the stop, and earlier ones."""
        aborted, _later = self._abort(self._journal.uploads(), at_stop=True)
        if aborted:
            log.info("aborted %d multipart uploads still open at stop", aborted)

    def _abort(self, records: list[UploadRecord], at_stop: bool = False) -> tuple[int, list[UploadRecord]]:
        """Abort each upload and drop its row: (how many ended, those whose provider did not answer). An upload
        the server no longer knows counts as ended; any other failure keeps its row for the next mount."""
        aborted, later = 0, []
        for r in records:
            if self._stopping.is_set() and not at_stop:
                break  # the stop's own pass takes over
            provider = self._providers.get(r.provider)
            if provider is None:
                log.warning("multipart upload %s of %s: provider %s is not in the config any more; abort it by "
                            "hand (or with a bucket lifecycle rule)", r.upload_id, r.key, r.provider)
                continue
            try:
                provider.abort_upload(r.key, r.upload_id)
            except NotFound:
                pass  # the server no longer knows it: completed or aborted already
            except ProviderUnavailable as e:
                log.debug("aborting multipart upload %s of %s: %s", r.upload_id, r.key, e)
                later.append(r)
                continue
            except StorefsError as e:
                log.warning("%s: aborting multipart upload %s of %s failed (%s); tried again at the next mount",
                            r.provider, r.upload_id, r.key, e)
                continue
            self.forget(r.provider, r.upload_id)
            aborted += 1
        return aborted, later
