"""The admission webhook's commands: ``whoexec certs`` and ``whoexec serve``."""

from __future__ import annotations

import datetime
import logging
import os
import sys
from pathlib import Path

import click

from webhook.commandline import friendly


@click.command()
@click.option("--service", default="whoexec", show_default=True, help="Service name.")
@click.option("--namespace", default="whoexec", show_default=True, help="Service namespace.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("certs"),
    show_default=True,
    help="Directory to write into.",
)
@click.option("--days", type=click.IntRange(1, 3650), default=365, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite existing files.")
@click.option(
    "--rotate-identity",
    is_flag=True,
    help="Only replace the identity key pair in --out; the current public key becomes "
    "identity.previous.pub, so tokens already minted keep verifying.",
)
@friendly
def certs(
    service: str, namespace: str, out: Path, days: int, force: bool, rotate_identity: bool
) -> None:
    """Write a dev CA, the webhook's TLS certificate and the identity key pair.

    Private keys (ca.key, tls.key, identity.key) and api-token (the bearer token of the
    consumer's POST /k8s-audit and /api/*) are written with mode 0600. The base64
    caBundle for the MutatingWebhookConfiguration is printed on stdout.

    With --rotate-identity, nothing else is touched: apply the manifests again, and the
    webhook signs with the new key while the consumers trust both.
    """
    if rotate_identity:
        from webhook.admission.certs import rotate_identity as rotate

        context = click.get_current_context()
        ignored = [
            f"--{name}"
            for name in ("service", "namespace", "days", "force")
            if context.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE
        ]
        if ignored:
            them = "it" if len(ignored) == 1 else "them"
            raise click.UsageError(
                "--rotate-identity replaces only the identity key pair in --out; "
                f"{', '.join(ignored)} would change nothing: leave {them} out"
            )

        done = rotate(out)
        click.echo(f"identity key rotated in {out}: new key id {done.current}", err=True)
        click.echo(f"still trusted (identity.previous.pub): {done.previous}", err=True)
        if done.dropped:
            click.echo(f"no longer trusted: {done.dropped}", err=True)
        return
    from webhook.admission.certs import generate_certs

    now = datetime.datetime.now(datetime.UTC)
    bundle = generate_certs(out, service, namespace, now, days=days, force=force)
    click.echo(
        f"wrote {', '.join(sorted(p.name for p in out.iterdir() if p.is_file()))} to {out}",
        err=True,
    )
    click.echo(f"serving certificate SANs: {', '.join(bundle.dns_names)}, 127.0.0.1", err=True)
    click.echo("caBundle:", err=True)
    click.echo(bundle.ca_bundle)


@click.command()
@click.option(
    "--certs",
    "certs_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Directory with tls.crt, tls.key, identity.key [env WHOEXEC_CERTS; default certs].",
)
@click.option("--bind", default=None, help="Address to listen on [WHOEXEC_BIND; 0.0.0.0:8443].")
@click.option("--workers", type=click.IntRange(1, 64), default=None, help="[WHOEXEC_WORKERS; 2]")
@click.option(
    "--threads",
    type=click.IntRange(1, 256),
    default=None,
    help="Unused since the gevent worker (kept so that existing flags still work).",
)
@click.option(
    "--worker-connections",
    type=click.IntRange(10, 100_000),
    default=None,
    help="Open connections per worker; near it, idle ones are closed "
    "[WHOEXEC_WORKER_CONNECTIONS; 1000].",
)
@click.option("--exclude-namespace", multiple=True, help="Glob; repeatable.")
@click.option("--exclude-user", multiple=True, help="Glob; repeatable.")
@click.option("--exclude-group", multiple=True, help="Glob; repeatable.")
@click.option(
    "--trusted-key",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Extra identity public key whose tokens count as our own (rotation); repeatable.",
)
@click.option("--log-level", default=None, help="[WHOEXEC_LOG_LEVEL; info]")
@click.option(
    "--kube",
    default=None,
    help="Pod look-ups: in-cluster, a kubeconfig path, or an apiserver URL [WHOEXEC_KUBE; off].",
)
@click.option(
    "--pod-lookup-timeout",
    type=float,
    default=None,
    help="Seconds a cache miss may wait for the apiserver [0.5].",
)
@click.option(
    "--image-without-env", multiple=True, help="Image glob known to lack /usr/bin/env; repeatable."
)
@click.option(
    "--env-trusted-namespace",
    multiple=True,
    help="Namespace glob whose images you vouch have /usr/bin/env: execs into pods without "
    "the static env are rewritten there, and skipped elsewhere; repeatable.",
)
@click.option(
    "--env-trusted-image",
    multiple=True,
    help="Image glob you vouch has /usr/bin/env (as above); repeatable.",
)
@friendly
def serve(
    certs_dir: Path | None,
    bind: str | None,
    workers: int | None,
    threads: int | None,
    worker_connections: int | None,
    exclude_namespace: tuple[str, ...],
    exclude_user: tuple[str, ...],
    exclude_group: tuple[str, ...],
    trusted_key: tuple[Path, ...],
    log_level: str | None,
    kube: str | None,
    pod_lookup_timeout: float | None,
    image_without_env: tuple[str, ...],
    env_trusted_namespace: tuple[str, ...],
    env_trusted_image: tuple[str, ...],
) -> None:
    """Run the admission webhook over TLS under gunicorn (gevent, keep-alive).

    Slow or stalled clients meet deadlines (WHOEXEC_HANDSHAKE_TIMEOUT, _HEADER_TIMEOUT,
    _BODY_TIMEOUT) and never hold up another admission.

    An exec is rewritten only where the env binary is known to exist in its container:
    the static env in pods created after install, or /usr/bin/env in namespaces and
    images you vouch for. Elsewhere it runs unchanged (outcome skipped-no-static-env).
    """
    from webhook.settings import Settings

    settings = Settings.from_env(
        os.environ,
        certs=certs_dir,
        bind=bind,
        workers=workers,
        threads=threads,
        worker_connections=worker_connections,
        exclude_namespaces=exclude_namespace,
        exclude_users=exclude_user,
        exclude_groups=exclude_group,
        trusted_keys=trusted_key,
        log_level=log_level,
        kube=kube,
        pod_lookup_timeout=pod_lookup_timeout,
        images_without_env=image_without_env,
        env_trusted_namespaces=env_trusted_namespace,
        env_trusted_images=env_trusted_image,
    )
    logging.basicConfig(level=settings.log_level.upper(), format="%(message)s", stream=sys.stderr)
    # gevent's cooperative sockets and TLS before anything imports them: the pod cache's
    # client (urllib3) binds ssl's names at import, in the master, before gunicorn's
    # worker would patch (after the fork). Threads stay threads (webhook/admission/gworker.py);
    # the master's signals stay gunicorn's own
    from gevent import monkey

    monkey.patch_all(thread=False, signal=False)
    # before anything imports prometheus_client (see prepare_metrics_dir)
    from webhook.admission.wsgi import WebhookApplication
    from webhook.serving import prepare_metrics_dir

    metrics_dir = prepare_metrics_dir(settings.workers)
    WebhookApplication(settings, metrics_dir).run()
