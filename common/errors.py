"""The one error type for invalid configuration, and the check that raises it."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is invalid.

    Attributes:
        key: Dotted path of the offending key, relative to where it was raised. Callers that know
            the enclosing group prefix it with `within`.
        reason: What is wrong, in one line.
    """

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason

    def within(self, prefix: str) -> ConfigError:
        """Returns the same error with its key placed under `prefix`."""
        return ConfigError(f"{prefix}.{self.key}" if prefix else self.key, self.reason)


def require(condition: bool, key: str, reason: str) -> None:
    """Raises `ConfigError(key, reason)` unless `condition` holds."""
    if not condition:
        raise ConfigError(key, reason)
