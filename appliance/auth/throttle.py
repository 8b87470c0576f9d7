"""Throttling password guesses: the API's ``/login``, the dashboard's login form and the
registry's token endpoint (Basic credentials with a password; tokens are not counted).

Failures are counted per (user name, source address). Once one pair has failed
``MAX_FAILURES`` times within ``WINDOW`` seconds, that pair is locked: every login from
that source for that user is answered 429 with ``Retry-After``, without the password being
checked. The first lock lasts ``FIRST_LOCK`` seconds; a failure right after a lock ends
(the earlier failures are still inside the window) locks again for twice as long, up to
``MAX_LOCK``; a lock longer than the window lets ``MAX_FAILURES`` more tries in before the
next, longer one. A success, or a quiet window after the last lock, forgets the pair.

Only that pair is locked: the same user from another address, and other users from the
same address, log in as before, so a guesser cannot lock the administrator out of the lab.
The state is in memory, per supervisor process: a restart, or another control-plane VM's
supervisor, starts from zero (a guesser gains ``MAX_FAILURES`` tries per restart).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

LOG = logging.getLogger(__name__)

MAX_FAILURES = 10
WINDOW = 300.0
FIRST_LOCK = 30.0
MAX_LOCK = 900.0
#: Pairs remembered at most; the least recently seen go first.
MAX_PAIRS = 10_000
NAME_CHARS = 64  # of a user name, as counted and logged


@dataclass
class _Pair:
    failures: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0
    locks: int = 0


class LoginThrottle:
    def __init__(self, clock: Callable[[], float] = time.monotonic, *,
                 max_failures: int = MAX_FAILURES, window: float = WINDOW,
                 first_lock: float = FIRST_LOCK, max_lock: float = MAX_LOCK,
                 max_pairs: int = MAX_PAIRS) -> None:
        self._clock = clock
        self.max_failures, self.window = max_failures, window
        self.first_lock, self.max_lock = first_lock, max_lock
        self.max_pairs = max_pairs
        self._pairs: OrderedDict[tuple[str, str], _Pair] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, user: str, source: str) -> int | None:
        """Whole seconds until ``user`` may try again from ``source``; None if not locked."""
        now = self._clock()
        with self._lock:
            pair = self._pairs.get(_key(user, source))
            if pair is None or pair.locked_until <= now:
                return None
            return max(1, math.ceil(pair.locked_until - now))

    def failed(self, user: str, source: str) -> int | None:
        """Count a wrong password; the seconds of the lock it starts, if it starts one."""
        now = self._clock()
        key = _key(user, source)
        with self._lock:
            pair = self._pairs.pop(key, None) or _Pair(deque(maxlen=self.max_failures))
            self._pairs[key] = pair  # the most recently seen last
            while pair.failures and pair.failures[0] <= now - self.window:
                pair.failures.popleft()
            if not pair.failures and now - pair.locked_until > self.window:
                pair.locks = 0  # a quiet window since the last lock ended
            pair.failures.append(now)
            while len(self._pairs) > self.max_pairs:
                self._pairs.popitem(last=False)
            if len(pair.failures) < self.max_failures:
                return None
            seconds = min(self.max_lock, self.first_lock * 2 ** pair.locks)
            pair.locks += 1
            pair.locked_until = now + seconds
        LOG.warning("login for %r from %s locked for %.0f s after %d failures in %.0f s",
                    key[0], source, seconds, len(pair.failures), self.window)
        return math.ceil(seconds)

    def succeeded(self, user: str, source: str) -> None:
        with self._lock:
            self._pairs.pop(_key(user, source), None)


def _key(user: str, source: str) -> tuple[str, str]:
    return user[:NAME_CHARS], source
