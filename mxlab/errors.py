"""The one exception type for mistakes a user can make (bad model id, bad recipe, bad file...)."""


class MxlabError(ValueError):
    """A problem the user can fix; the message says what to do."""


class Cancelled(MxlabError):
    """The user cancelled a long-running job; nothing partial was kept."""
