"""The numbers the provider view runs by, in one frozen record passed in (tests pass their own)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ViewTunables:
    """Sizes, delays and bounds of the listing cache, provider health and background refresh."""

    #: cached folder listings kept, least recently used dropped first
    max_listings: int = 256
    #: cached heads (one key each, absent ones included) kept, oldest dropped first
    max_heads: int = 50_000
    #: a lookup of an unknown name lists its folder when the folder holds no more than this; bigger
    #: folders get one HEAD per name (listing 100,000 keys to answer for one is no bargain)
    lookup_listing_max: int = 1000
    #: a cached listing this big is expired, not copied, when storefs changes a name in it
    max_listing_update: int = 5000
    #: how long storefs' own changes are kept for listings fetched while they landed (a long listing
    #: of a big folder may run this long)
    record_keep: float = 120.0
    #: how often the kept changes and the small bookkeeping maps are pruned
    prune_every: float = 10.0
    #: a name missing from a cached listing older than this is checked with a new listing of its
    #: folder (at most once per folder per this long): a file another client just uploaded opens by
    #: its path within seconds, while listings keep answering everything else for their whole TTL
    miss_recheck: float = 2.0
    #: a folder whose listing answered a miss since it was fetched (files being created there) is
    #: listed again in the background this long before its next miss would have to wait for the recheck;
    #: more than slow_after, so that a recheck that hangs has made its provider slow by then, and the
    #: miss answers from the cache at once instead of waiting out the rest of slow_after
    recheck_ahead: float = 0.75
    #: a listing in use since it was fetched is fetched again in the background this long before it
    #: expires (as a share of the TTL), so a folder being worked in never makes a request wait for it
    refresh_ahead: float = 0.2
    #: ... and so is a folder left alone, for this many TTLs after it last answered a request (a job
    #: writes a batch, and a walk, rsync or `ls -R` comes a minute later), then it is let expire
    keep_warm_ttls: float = 4.0
    #: at most this many folders are kept fresh for having been used lately (the most recent)
    keep_warm_max: int = 256
    #: background refreshes skip listings bigger than this (a 100,000-key folder is listed on demand)
    refresh_max_names: int = 5000
    #: after a provider failed to answer, lookups skip it this long (doubling per failure in a row,
    #: up to max_down_for) instead of waiting on it again
    down_for: float = 5.0
    max_down_for: float = 30.0
    #: a provider call that has made no progress for this long makes its provider "slow": lookups
    #: then answer from what the cache holds (at most stale_max old) instead of waiting behind it
    slow_after: float = 0.5
    #: the oldest listing or head (since its fetch began) a lookup answers from, without asking,
    #: while its provider is slow or down
    stale_max: float = 300.0
    #: a lookup waiting for a revalidation looks this often (seconds) whether its provider turned slow
    slow_poll: float = 0.01
    #: threads that revalidate expired listings and heads for waiting lookups
    revalidate_threads: int = 4
    #: a folder's listing, once read, has its first subfolders listed in the background, this many
    #: at a time: a walk (find, du, rsync, ls -R) lists them next, one round trip each, in turn
    prefetch_subfolders: int = 64
    prefetch_threads: int = 8
    #: a request for a listing being fetched in the background waits for it this long at most
    prefetch_wait: float = 5.0
    #: once lookups in a folder need a HEAD each (an object store's listing has no mode or mtime), the
    #: names after it are asked for ahead, this many at a time (see ahead.py) ...
    heads_ahead_threads: int = 16
    #: ... each asking for up to this many names at once where the provider can (S3 pipelines its HEADs)
    heads_ahead_batch: int = 32
    #: ... when at least this many need it, and at most this many per folder (the head cache keeps max_heads)
    heads_ahead_min: int = 16
    heads_ahead_max: int = 20_000
    #: a thread with nothing to ask for this long ends
    heads_ahead_idle: float = 2.0


#: what a view runs by unless it is given other tunables
DEFAULT_TUNABLES = ViewTunables()
