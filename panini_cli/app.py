"""The `panini` Typer app. Imports no torch at module level, so --help is fast."""
import typer

app = typer.Typer(help="Restore degraded faces with Panini-Net.", no_args_is_help=True,
                  add_completion=False)


def main() -> None:
    app()
