"""The one exception type that bioprop raises for bad input.

The CLI turns a :class:`BiopropError` into a one-line message on stderr and exit status 2,
so every message must name the field, file or value at fault and say what was expected.
"""


class BiopropError(ValueError):
    """Bad input from the user: an unknown name, a bad value, a missing or corrupt file."""
