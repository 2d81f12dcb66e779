"""The one error type a user can cause.

Every problem that comes from the user's input (a bad argument, a bad data file, a
damaged run folder) is raised as `TrainerError` with a one-line message that says what
was wrong and what to do. The CLI prints it and exits 2; the app shows it in the page.
Anything else is a bug and is allowed to propagate.
"""


class TrainerError(Exception):
    """A problem with the user's input, with a message meant for the user (one line)."""

    def __init__(self, message: str):
        # Keep messages to a single line so the CLI and the app can show them as-is.
        super().__init__(" ".join(str(message).split()))
