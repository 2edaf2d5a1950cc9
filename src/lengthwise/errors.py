"""The one exception type for bad user input.

The CLI turns a `UserError` into a single line on stderr and exit code 2, so every module can
raise it with a message that names the file or config key and what was expected.
"""


class UserError(Exception):
    """Bad input (a file, a config key, a value): reported in one line, exit code 2."""
