"""The ``ldct-monai`` command line (typer).

Each command lives in ``ldct_monai/commands/<name>.py`` and keeps its heavy imports (torch, MONAI)
inside the function, so ``--help`` stays fast. Every command is wrapped by :func:`handle_errors`:
the project's own exceptions become one red line on stderr and exit code 1, never a traceback.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import typer
from rich.logging import RichHandler
from rich.markup import escape

from ldct_monai import __version__
from ldct_monai.commands import bench, build_manifest, demo, denoise, evaluate, models, synth, train
from ldct_monai.errors import LdctError
from ldct_monai.progress import console

app = typer.Typer(
    name="ldct-monai",
    help="DICOM-native unpaired low-dose CT denoising (CycleGAN) built on MONAI.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def handle_errors(func: Callable) -> Callable:
    """Turn :class:`LdctError` into a one-line message on stderr and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except LdctError as err:
            console.print(f"[bold red]Error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            console.print(
                "[bold red]Interrupted.[/] Output folders are only moved into place when complete; "
                "a training run keeps its checkpoints (continue it with --resume)."
            )
            raise typer.Exit(130) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ldct-monai {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=False)],
        force=True,
    )


app.command("synth")(handle_errors(synth.synth))
app.command("build-manifest")(handle_errors(build_manifest.build_manifest))
app.command("train")(handle_errors(train.train))
app.command("denoise")(handle_errors(denoise.denoise))
app.command("evaluate")(handle_errors(evaluate.evaluate))
app.command("demo")(handle_errors(demo.demo))
app.command("models")(handle_errors(models.models))

bench_app = typer.Typer(help="Benchmarks: throughput against a reference measured in the same process.", no_args_is_help=True)
for _name, _func in bench.COMMANDS.items():
    bench_app.command(_name)(handle_errors(_func))
app.add_typer(bench_app, name="bench")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
