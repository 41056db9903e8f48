"""Exception hierarchy and the closed vocabulary of reject reasons and stages.

Every failure that concerns one input becomes a reject row carrying one of
:data:`REASONS`; every failure that is the user's mistake (spec, arguments,
input root, output) is a :class:`UserError` and fails the run before any image
is read.
"""

from __future__ import annotations

#: Stages at which an input can be rejected (docs/CONTRACT.md, "Rejects").
STAGES = ("list", "read", "decode", "preprocess", "augment", "extract", "write")

#: Reject reasons (docs/CONTRACT.md). Adding one is allowed; renaming one is not.
REASONS = (
    "empty",
    "unreadable",
    "unsupported_format",
    "truncated",
    "corrupt",
    "too_large",
    "timeout",
    "crashed",
    "missing",
    "read_error",
    "duplicate",
    "invalid_label",
    "invalid_input",
    "transform_failed",
    "extract_failed",
    "non_finite",
)


class FeaturelibError(Exception):
    """Base class of every error raised on purpose by featurelib."""


class UserError(FeaturelibError):
    """The user's mistake (spec, arguments, input, output): exit code 2."""


class SpecError(UserError):
    """The spec is invalid; raised before any image is read."""


class SchemaError(FeaturelibError):
    """Output files do not match the schema their manifest or spec declares."""


class PolicyError(FeaturelibError):
    """The run failed by policy (error budget exceeded): exit code 3."""


class Terminated(KeyboardInterrupt):
    """The process was asked to stop by a signal other than Ctrl-C (SIGTERM, SIGHUP).

    A :class:`KeyboardInterrupt`, so every clean-up that handles Ctrl-C (stop the
    workers, write ``_FAILED.json`` of kind ``interrupted``, save nothing half-done)
    handles it too; the exit code is ``128 + signum`` (143 for SIGTERM), as a shell reports it.
    """

    def __init__(self, signum: int) -> None:
        import signal

        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class RecordError(FeaturelibError):
    """One input failed; it becomes a reject row, never a crash.

    Parameters
    ----------
    reason : str
        One of :data:`REASONS`.
    detail : str
        Human-readable detail, stored in the ledger (never a secret).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown reject reason {reason!r}; known: {REASONS}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class DecodeError(RecordError):
    """Decoding an input's bytes failed (reason: empty, unreadable, truncated, ...)."""
