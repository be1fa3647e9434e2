"""The one exception type a user sees: a paragraph that says what went wrong and how to fix it."""

import textwrap


class UserError(Exception):
    """Bad input or environment. Printed as a paragraph, without a traceback."""

    def __str__(self) -> str:
        return textwrap.fill(" ".join(str(self.args[0]).split()), width=100)
