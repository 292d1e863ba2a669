"""`panini weights list | import | verify | path`: the local weight cache."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..console import console, fail

app = typer.Typer(help="Manage model weights: import official checkpoints, list, verify.",
                  no_args_is_help=True)


@app.command("list")
def list_models() -> None:
    """List known and imported models."""
    from rich.table import Table

    from panini_models import registry

    table = Table("name", "status", "kind", "sha256", "description / file")
    index = registry.read_index()
    for name in sorted(set(registry.KNOWN) | set(index)):
        known = registry.KNOWN.get(name)
        if name == "default":
            try:
                path, sha = registry.resolve("default")
                table.add_row(name, "bundled", "panini", (sha or "")[:12], str(path))
            except FileNotFoundError:
                table.add_row(name, "[red]missing[/]", "", "", known.description)
        elif name in index:
            e = index[name]
            table.add_row(name, "imported", e["kind"], e["sha256"][:12], e["file"])
        else:
            table.add_row(name, "[yellow]not imported[/]", "", "",
                          f"{known.description}; get {known.source_file}")
    console.print(table)
    console.print(f"cache: {registry.weights_dir()}")


@app.command("import")
def import_(file: Path = typer.Argument(..., help="Official Panini (.pth), MoCo (.pth.tar), mmgen or "
                                                  "rosinality StyleGAN2, or panini .safetensors file."),
            name: Optional[str] = typer.Option(None, help="Registry name (default: mfr / sr / dre-moco / "
                                                          "stylegan2-SIZE from the file).")) -> None:
    """Convert a checkpoint into the cache (safetensors + config), recording its sha256."""
    from panini_models import registry
    from panini_models.checkpoints import CheckpointError

    try:
        name, entry, report = registry.import_weights(file, name)
    except (CheckpointError, ValueError) as e:
        fail(str(e))
    if report is not None:
        console.print(report.summary())
    console.print(f"imported [bold]{name}[/] ({entry['kind']}) -> {registry.weights_dir() / entry['file']}")
    console.print(f"sha256 {entry['sha256']}")


@app.command()
def download(url: str = typer.Argument(..., help="http(s) URL of a weight file."),
             name: Optional[str] = typer.Option(None, help="Registry name (default: from the file)."),
             sha256: Optional[str] = typer.Option(None, help="Expected sha256 of the downloaded file.")) -> None:
    """Download a weight file (with a progress bar and checksum) and import it."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from panini_models import registry
    from panini_models.checkpoints import CheckpointError

    with Progress("{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("downloading", total=None)
        try:
            name, entry, report = registry.download(
                url, name, sha256, progress=lambda done, total: bar.update(task, completed=done, total=total))
        except (ConnectionError, CheckpointError, ValueError) as e:
            fail(str(e))
    if report is not None:
        console.print(report.summary())
    console.print(f"imported [bold]{name}[/] ({entry['kind']}) sha256 {entry['sha256']}")


@app.command()
def verify(names: Optional[list[str]] = typer.Argument(None, help="Names or paths (default: all imported).")) -> None:
    """Recompute each file's sha256 and compare it with the one recorded at import."""
    from panini_models import registry

    names = names or sorted(registry.read_index())
    bad = 0
    for name in names:
        try:
            path, actual, expected = registry.verify(name)
        except FileNotFoundError as e:
            console.print(f"[red]missing[/] {name}: {e}")
            bad += 1
            continue
        if expected is None:
            console.print(f"[yellow]unchecked[/] {name}: no recorded sha256 ({actual})")
        elif actual == expected:
            console.print(f"[green]ok[/] {name} {actual[:12]} {path}")
        else:
            console.print(f"[red]MISMATCH[/] {name}: expected {expected[:12]}, found {actual[:12]} ({path})")
            bad += 1
    if not names:
        console.print("no imported weights")
    raise typer.Exit(1 if bad else 0)


@app.command()
def path(name: Optional[str] = typer.Argument(None, help="A model name; without it, the cache folder.")) -> None:
    """Print the cache folder, or the file behind a model name."""
    from panini_models import registry

    if name is None:
        print(registry.weights_dir())
        return
    try:
        print(registry.resolve(name)[0])
    except FileNotFoundError as e:
        fail(str(e))
