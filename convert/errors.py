"""The project's exception types: errors a user can cause, printed as one line by the CLIs."""


class ToolkitError(Exception):
    """A problem with the user's input or environment (bad path, bad file, bad flag): exit 2."""

    exit_status = 2


class DataError(ToolkitError):
    """A dataset file is missing, corrupt or cannot be fetched."""


class ArtifactError(ToolkitError):
    """A file in the artifacts folder is missing or unreadable."""


class ParityError(Exception):
    """Parity failed for at least one model: exit 1."""

    exit_status = 1
