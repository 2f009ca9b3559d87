"""The ``whoexec`` command line (click): the group, assembled from each wing's commands.
Errors exit 1 with a one-line message."""

from __future__ import annotations

from pathlib import Path

import click

from webhook.admission.commands import certs, serve
from webhook.attribution.commands import consume
from webhook.commandline import friendly
from webhook.sessions.commands import audit, findings, prune, session, sessions, ui, users


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="whoexec")
def main() -> None:
    """whoexec: which Kubernetes user ran that command in the pod?"""


@main.command()
@click.option("--keep", is_flag=True, help="Keep the temporary directory (logs, store).")
@friendly
def demo(keep: bool) -> None:
    """Run the whole pipeline on this machine, with real components, in about a minute.

    Certificates, the webhook over TLS, the consumer with its SQLite store; this process
    acts as kube-apiserver and, clearly labelled, stands in for Falco.
    """
    if not Path("/proc/self/stat").exists():
        raise click.ClickException("the demo reads /proc: it needs Linux")
    from webhook.demo import Demo

    Demo(say=click.echo, keep=keep).run()


for command in (certs, serve, consume, sessions, session, users, findings, prune, ui, audit):
    main.add_command(command)


if __name__ == "__main__":  # pragma: no cover
    main()
