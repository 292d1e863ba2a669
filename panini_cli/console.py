"""One rich console for the CLI, and the one-line error exit."""
from __future__ import annotations

import sys

from rich.console import Console

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)


def fail(message: str, code: int = 1):
    """Print `error: message` on one line to stderr and exit with `code`."""
    err_console.print(f"[red]error:[/] {message}", soft_wrap=True, markup=True)
    sys.exit(code)
