"""What a feed worker is doing: the words /healthz, `status` and the metrics show."""

from __future__ import annotations

from batch.strenum import StrEnum


class WorkerState(StrEnum):
    """What a feed worker is doing (/healthz ``state``); the words are the API of /healthz."""

    STARTING = "starting"        # not yet through its first scan
    IDLE = "idle"                # waiting for files
    PROCESSING = "processing"    # a file is being processed
    UNAVAILABLE = "unavailable"  # the inbox cannot be reached: reconnecting with backoff
    AUTH_FAILED = "auth_failed"  # Ropo One refused the credentials (or TLS): retried with backoff
    PAUSED = "paused"            # the journal or a disk refused a write: the file waits
    RETRYING = "retrying"        # a file failed unexpectedly and holds the feed
    ERROR = "error"              # an unexpected error outside a file: retrying
    CRASHED = "crashed"          # the thread ended by a bug
    STOPPED = "stopped"          # ended on a stop request (or the feed was removed)
    HOLDING = "holding"          # (/healthz only) delivery holds for an API outage (circuit breaker)
    STANDBY = "standby"          # another instance (same journal) holds the feed's lease
    FOREIGN = "foreign"          # the inbox's lease marker names a live instance with another journal
    HANDOVER = "handover"        # a file left in processing/ by another journal's instance waits for an operator
