"""Errors about job settings that name the setting, so each front end can name its own option."""

from __future__ import annotations


class SettingError(ValueError):
    """A job setting that cannot work; ``settings`` are the field names (``JobOptions`` etc.) at fault.

    The message says what is wrong in library terms; the command line maps ``settings`` to its
    flags and adds that advice (``cli.jobs``).
    """

    def __init__(self, message: str, *settings: str):
        super().__init__(message)
        self.settings = settings


class OutputExistsError(SettingError, FileExistsError):
    """The output directory exists and ``overwrite`` was not set."""


class WaitTimeoutError(SettingError, TimeoutError):
    """A bounded wait ran out (resources on a shared cluster, the actors' start); ``settings`` holds the bound."""
