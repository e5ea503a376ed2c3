"""One base class for every error a user can fix (bad config, data, weights or model file).

The scripts print these as one clear message and exit with status 2, instead
of a traceback from deep inside a library.
"""


class UsadError(Exception):
    """An input problem the user can fix; the message says what, where, and what to do."""
