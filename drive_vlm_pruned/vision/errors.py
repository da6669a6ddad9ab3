"""The error every vision backend raises when it cannot run here (shared by all of them)."""


class BackendUnavailable(RuntimeError):
    """This backend cannot run here; the message says why and what would fix it."""
