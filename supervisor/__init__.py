"""slotd: a supervisor daemon for long-running command-line sessions."""

__version__ = "0.1.0"
