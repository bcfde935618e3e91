"""The one exception type of the package.

Every message names the bad value and the fix; the CLI prints it on one line and
exits with code 2.
"""


class OtterliteError(Exception):
    """A user-facing error: bad input, a missing file, an unusable checkpoint."""
