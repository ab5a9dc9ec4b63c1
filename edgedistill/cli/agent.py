"""``edgedistill agent serve`` (on the device) and ``edgedistill device ...`` (on your machine).

The agent runs on the machine that will run the model and profiles uploaded ONNX models there;
``device profile`` uploads a bundle, an ONNX file or a run's models, waits for the measurements,
prints them and appends them to a results store (SQLite). See docs/agent.md.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgedistill.cli.help import examples

if TYPE_CHECKING:
    from edgedistill.agent.client import DeviceResults

agent_app = typer.Typer(no_args_is_help=True, help="Run the device agent (on the device).")
device_app = typer.Typer(
    no_args_is_help=True, help="Profile models on a device that runs `edgedistill agent serve`."
)

DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]
TokenFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--token-file", help="File holding the agent token (else $EDGEDISTILL_AGENT_TOKEN)."
    ),
]
DeviceOpt = Annotated[
    str, typer.Option("--device", "-d", help="Agent URL, e.g. http://jetson.local:8765.")
]


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _ints(value: str, what: str) -> list[int]:
    from edgedistill.errors import RecipeError

    try:
        return [int(v) for v in _csv(value)]
    except ValueError:
        raise RecipeError(f"{what}: expected comma-separated integers, got {value!r}") from None


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
        except OSError:
            return False


@agent_app.command("serve", epilog=examples("agent serve"))
def serve_command(
    state: Annotated[Path, typer.Option("--state", help="State folder (uploads, jobs, results).")],
    host: Annotated[str, typer.Option("--host", help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port (0: any free one).")] = 8765,
    token_file: TokenFileOpt = None,
    max_upload_mb: Annotated[
        int, typer.Option("--max-upload-mb", help="Largest upload in MiB.")
    ] = 512,
    debug: DebugOpt = False,
) -> None:
    """Serve the agent: profile uploaded models on this machine, one job at a time."""
    from edgedistill.cli.app import _user_errors, console

    with _user_errors(debug):
        from edgedistill.cli.inputs import check_state_path

        check_state_path(state)  # a wrong --state first: it needs no extra installed
        from edgedistill.agent.client import read_token
        from edgedistill.agent.server import serve

        token_path = token_file
        read_token(token_path)  # refuse before importing/binding anything else
        if not is_loopback(host):
            console.print(
                f"[yellow]warning:[/] binding to {escape(host)} exposes the agent to the "
                "network; anyone with the token can run models here. Prefer 127.0.0.1 with "
                "an SSH tunnel, or a firewalled network (docs/agent.md)."
            )

        def ready(url: str) -> None:
            typer.echo(f"agent listening on {url} (state: {state})")

        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is the normal way to stop
            serve(state, host, port, token_path, max_upload_mb=max_upload_mb, on_ready=ready)


def _store_for(path: Path, store: Path | None) -> Path:
    if store is not None:
        return store
    if path.is_dir() and (path / "export" / "manifest.json").is_file():
        return path / "results.sqlite"
    return Path("results.sqlite")


def collect_models(path: Path) -> dict[str, Path]:
    """Models to profile from a run folder, a bundle folder or one ``.onnx`` file.

    Raises:
        AgentError: Nothing to profile at ``path``.
    """
    from edgedistill.agent.errors import AgentError
    from edgedistill.pipeline.device import run_models

    if path.is_file() and path.suffix == ".onnx":
        return {path.stem: path}
    if path.is_dir() and (path / "export" / "manifest.json").is_file():
        return run_models(path)
    if path.is_dir():
        found = sorted(p for p in path.rglob("*.onnx") if p.is_file())
        stems = [p.stem for p in found]
        unique = len(set(stems)) == len(stems)
        return {
            (
                p.stem
                if unique
                else p.relative_to(path).with_suffix("").as_posix().replace("/", "-")
            ): p
            for p in found
        }
    raise AgentError(f"{path}: give a bundle folder, a run folder or an .onnx file")


@device_app.command("profile", epilog=examples("device profile"))
def profile_command(
    path: Annotated[
        Path, typer.Argument(help="Bundle folder, run folder or .onnx file.", show_default=False)
    ],
    device: DeviceOpt,
    token_file: TokenFileOpt = None,
    runtimes: Annotated[str, typer.Option(help="Comma-separated runtimes.")] = "onnxruntime",
    precisions: Annotated[
        str, typer.Option(help="Comma-separated; int8 measures the QDQ models.")
    ] = "fp32,int8",
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Comma-separated.")] = "1",
    threads: Annotated[str, typer.Option(help="Comma-separated thread counts.")] = "1",
    warmup: Annotated[int, typer.Option(help="Untimed calls first.")] = 20,
    runs: Annotated[int, typer.Option(help="Timed calls per measurement.")] = 200,
    store: Annotated[
        Path | None,
        typer.Option(
            "--store", help="Results store (default: RUN/results.sqlite or ./results.sqlite)."
        ),
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """Upload models to the agent at --device, profile them there, store and print results."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from edgedistill.cli.app import _user_errors, console

    with _user_errors(debug):
        from edgedistill.agent.client import profile_on_device, read_token
        from edgedistill.agent.store import ResultsStore
        from edgedistill.cli.inputs import check_profile_path

        check_profile_path(path)
        token = read_token(token_file)
        models = collect_models(path)
        if not models:
            from edgedistill.agent.errors import AgentError

            raise AgentError(f"{path}: no .onnx model found")
        results_store = ResultsStore(_store_for(path, store))
        run_id = path.resolve().name if path.is_dir() else ""
        console.print(f"profiling {len(models)} model(s) on [cyan]{escape(device)}[/]")
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console
        ) as bar:
            task = bar.add_task("queued", total=None)

            def on_progress(status: dict[str, Any]) -> None:
                progress = status.get("progress") or {}
                current = progress.get("current") or status["state"]
                runs_done = progress.get("runs")
                text = f"{current} ({runs_done})" if runs_done else current
                bar.update(
                    task,
                    total=progress.get("total"),
                    completed=progress.get("done", 0),
                    description=escape(str(text)),
                )

            result = profile_on_device(
                models,
                device,
                token,
                results_store,
                runtimes=_csv(runtimes),
                precisions=_csv(precisions),
                batch_sizes=_ints(batch_sizes, "--batch-sizes"),
                threads=_ints(threads, "--threads"),
                warmup=warmup,
                runs=runs,
                run_id=run_id,
                on_progress=on_progress,
            )
    _print_results(result, results_store.path)


def _out() -> Console:
    """stdout; wide enough for the tables when it is a file or a CI log (rich defaults to 80)."""
    return Console() if sys.stdout.isatty() else Console(width=200)


def _print_results(result: DeviceResults, store: Path) -> None:
    out = _out()
    table = Table(title=f"{result.device_name} ({result.device_id}) — job {result.job_id}")
    header = ["model", "runtime", "precision", "batch", "threads", "p50 ms", "p90 ms", "p99 ms"]
    for i, h in enumerate([*header, "samples/s", "build s", "RSS MiB"]):
        table.add_column(h, justify="left" if i < 3 else "right")
    for m in result.measurements:
        table.add_row(
            m.model_name,
            m.runtime,
            m.precision,
            str(m.batch),
            str(m.threads),
            f"{m.p50_ms:.4f}",
            f"{m.p90_ms:.4f}",
            f"{m.p99_ms:.4f}",
            f"{m.throughput_per_s:,.0f}",
            "-" if m.engine_build_s is None else f"{m.engine_build_s:.1f}",
            "-" if m.memory_mb is None else f"{m.memory_mb:.0f}",
        )
    out.print(table)
    for error in result.errors:
        out.print(f"[yellow]failed[/] {escape(error['item'])}: {escape(error['error'])}")
    out.print(f"{len(result.measurements)} row(s) appended to {store}")


@device_app.command("environment", epilog=examples("device environment"))
def environment_command(
    device: DeviceOpt, token_file: TokenFileOpt = None, debug: DebugOpt = False
) -> None:
    """Show the device: machine, CPU/GPU, library versions, and which runtimes it can run."""
    from edgedistill.cli.app import _user_errors

    with _user_errors(debug):
        from edgedistill.agent.client import AgentClient, read_token

        info = AgentClient(device, read_token(token_file)).environment()
    out = _out()
    env = info["environment"]
    out.print(f"[bold]{escape(info['device_name'])}[/] (id {info['device_id']})")
    out.print(f"cpu: {escape(str(env.get('cpu')))} × {env.get('cpu_count')}")
    for key in ("gpu", "jetson"):
        if env.get(key):
            out.print(f"{key}: {escape(str(env[key]))}")
    libraries = env.get("libraries", {})
    out.print("libraries: " + ", ".join(f"{k} {v}" for k, v in libraries.items()))
    table = Table(title="runtimes")
    for h in ("runtime", "can run", "precisions", "install"):
        table.add_column(h)
    for name, entry in info["runtimes"].items():
        ok = entry.get("available", entry.get("installed"))
        table.add_row(
            name,
            "[green]yes[/]" if ok else "[red]no[/]",
            ", ".join(entry.get("precisions", [])),
            "" if ok else escape(entry.get("install") or "needs a CUDA GPU"),
        )
    out.print(table)
