"""Errors that the command line reports as one line, without a traceback."""


class UserError(Exception):
    """A problem the user can fix (bad name, missing file, corrupt data).

    The message is one line that says what is wrong and what to do.
    The CLI prints it as ``error: <message>`` and exits with status 2.
    """
