"""The Falco path's command: ``whoexec consume``."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

import click

from webhook.commandline import friendly


@click.command()
@click.option(
    "--input",
    "input_path",
    default=None,
    help="Falco JSON alerts: a file, or - for stdin. Without --follow it is read to the end.",
)
@click.option("--follow", is_flag=True, help="Follow --input like tail -F (rotation, restarts).")
@click.option("--listen", default=None, help="Serve POST /falco on this address [WHOEXEC_LISTEN].")
@click.option(
    "--identity-pub",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Identity public key (or a directory of *.pub); repeatable for rotation.",
)
@click.option(
    "--procfs",
    type=click.Path(path_type=Path),
    default=None,
    help="Walk this procfs for lineage (a DaemonSet with hostPID: /proc).",
)
@click.option("--db", default=None, help="Session store URL [WHOEXEC_DB].")
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Also append enriched alerts to this file.",
)
@click.option(
    "--forward",
    "forward_url",
    default=None,
    help="POST each enriched alert here (falcosidekick), with an on-disk spool.",
)
@click.option("--no-stdout", is_flag=True, help="Do not write enriched alerts to stdout.")
@click.option(
    "--forward-roots",
    is_flag=True,
    default=None,
    help="Also pass on the session-root rule's own alerts.",
)
@click.option(
    "--hold",
    "hold_seconds",
    type=click.FloatRange(0),
    default=None,
    help="Seconds to hold an unattributed alert for a late session root [2].",
)
@click.option(
    "--max-processes",
    type=click.IntRange(1),
    default=None,
    help="Bound of the process table [100000].",
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where offsets and spools live [whoexec-state].",
)
@click.option("--tls-cert", type=click.Path(path_type=Path), default=None)
@click.option("--tls-key", type=click.Path(path_type=Path), default=None)
@click.option(
    "--client-ca",
    type=click.Path(path_type=Path),
    default=None,
    help="Require client certificates signed by this CA (mTLS).",
)
@click.option(
    "--api-token-file",
    type=click.Path(path_type=Path),
    default=None,
    help="Bearer token that POST /k8s-audit and /api/* ask for (a mounted Secret) "
    "[WHOEXEC_API_TOKEN_FILE; without it they answer loopback only].",
)
@click.option("--log-level", default=None, help="[WHOEXEC_LOG_LEVEL; info]")
@friendly
def consume(
    input_path: str | None,
    follow: bool,
    listen: str | None,
    identity_pub: tuple[Path, ...],
    procfs: Path | None,
    db: str | None,
    output: Path | None,
    forward_url: str | None,
    no_stdout: bool,
    forward_roots: bool | None,
    hold_seconds: float | None,
    max_processes: int | None,
    state_dir: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    client_ca: Path | None,
    api_token_file: Path | None,
    log_level: str | None,
) -> None:
    """Attribute Falco alerts to the Kubernetes user of their exec session.

    Batch: `whoexec consume --input events.json --identity-pub identity.pub` reads the
    file to its end, writes enriched alerts as JSON lines to stdout and exits 0.
    """
    from webhook.settings import Settings

    settings = Settings.from_env(
        os.environ,
        identity_pub=identity_pub,
        procfs=procfs,
        db=db,
        output=output,
        forward_url=forward_url,
        forward_roots=forward_roots,
        hold_seconds=hold_seconds,
        max_processes=max_processes,
        state_dir=state_dir,
        listen=listen,
        tls_cert=tls_cert,
        tls_key=tls_key,
        client_ca=client_ca,
        api_token_file=api_token_file,
        log_level=log_level,
    )
    logging.basicConfig(level=settings.log_level.upper(), format="%(message)s", stream=sys.stderr)
    if settings.listen and input_path:
        raise click.UsageError("use either --listen or --input, not both")
    if not settings.listen and not input_path:
        raise click.UsageError("give --input FILE (or - for stdin), or --listen ADDRESS")
    if follow and (not input_path or input_path == "-"):
        raise click.UsageError("--follow needs --input FILE")
    stdout = None if no_stdout else sys.stdout.buffer
    if settings.listen:
        # before anything imports prometheus_client (see prepare_metrics_dir)
        from webhook.serving import prepare_metrics_dir

        # the intake and the pipeline process; in the state dir: a kill -9 leaves no trace
        prepare_metrics_dir(2, settings.state_dir / "metrics")
        from webhook.attribution import app as consumer_app

        consumer_app.serve_consumer(settings, stdout)
        return
    from webhook.attribution import app as consumer_app

    assert input_path is not None
    # batch mode gives a lost database 60 s to come back, then fails clearly
    consumer = consumer_app.build_consumer(
        settings, stdout=stdout, input_name="file", store_max_wait=None if follow else 60.0
    )
    if follow:
        with contextlib.suppress(KeyboardInterrupt):
            consumer_app.run_follow(consumer, Path(input_path), settings.state_dir)
        return
    if input_path == "-":
        count = consumer_app.run_batch(consumer, sys.stdin.buffer)
    else:
        try:
            stream = Path(input_path).open("rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            consumer.close()
            raise click.ClickException(
                f"cannot read --input {input_path}: {exc.strerror}"
            ) from None
        with stream:
            count = consumer_app.run_batch(consumer, stream)
    stats = consumer.pipeline.stats
    skipped = sum(v for k, v in stats.items() if k.startswith("skipped_"))
    attributed = [
        f"{key.removeprefix('attribution_')} {value}"
        for key, value in sorted(stats.items())
        if key.startswith("attribution_")
    ]
    click.echo(
        f"whoexec: {count} alerts read, {skipped} lines skipped, {stats['findings']} findings; "
        f"attribution: {', '.join(attributed) or 'nothing passed on'}",
        err=True,
    )
