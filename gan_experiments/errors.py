"""The one exception type a user sees: a paragraph that says what went wrong and how to fix it."""


class UserError(Exception):
    """Bad input or environment. Printed as one paragraph, without a traceback."""

    def __str__(self) -> str:
        return " ".join(str(self.args[0]).split())
