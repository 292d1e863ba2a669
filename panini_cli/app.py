"""The `panini` Typer app. Imports no torch at module level, so --help is fast."""
import typer

from .commands import degrade, edit, inspect, restore, video, weights
from .commands import evaluate, train

app = typer.Typer(help="Restore degraded faces with Panini-Net (AAAI 2022).", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
app.command()(restore.restore)
app.command()(inspect.inspect)
app.command()(edit.edit)
app.command()(degrade.degrade)
app.command()(video.video)
app.add_typer(weights.app, name="weights")
app.add_typer(train.app, name="train")
app.command()(evaluate.evaluate)


@app.command()
def version() -> None:
    """Print the panini version."""
    from . import __version__
    print(__version__)


def main() -> None:
    import sys

    args = sys.argv[1:]
    if args and not {"--help", "-h"} & set(args) and args[0] != "version":
        from .malloc import reexec_tuned
        reexec_tuned(["-m", "panini_cli", *args])
    app(prog_name="panini")
