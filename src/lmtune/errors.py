"""Errors a user can cause. The CLI prints them in a line or two, without a traceback."""


class LmtuneError(Exception):
    """Base class: a problem with the user's input, with a message that says what to do."""


class ConfigError(LmtuneError):
    """A bad config key or value, an impossible combination, or a missing file or model."""


class DataError(LmtuneError):
    """A bad data row: the message names the file, the line and the field."""
