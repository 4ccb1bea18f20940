"""The ``voicecore`` command. Every verb is a thin call into the same library functions the
HTTP API and the tests use; the verbs live one group per module and are added here explicitly:

- :mod:`~voicecore.cli.run` — ``demo``, ``run``, ``chat``, ``serve``;
- :mod:`~voicecore.cli.calls` — ``calls list``, ``calls show``;
- :mod:`~voicecore.cli.data` — ``tenants``, ``subjects``, ``optout``, ``retention``, ``audit``, ``policy``;
- :mod:`~voicecore.cli.providers` — ``providers set|list|delete|snippet``;
- :mod:`~voicecore.cli.db` — ``db upgrade``, ``db current`` (the database schema);
- :mod:`~voicecore.cli.bench` — ``bench latency|compare|concurrency|overhead``.
"""

from __future__ import annotations

import click

from voicecore.cli import bench, calls, campaigns, contacts, data, db, providers, run
from voicecore.cli.options import setup_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="Debug logs (never call content at INFO).")
@click.version_option(package_name="voicecore")
def cli(verbose: int) -> None:
    """voicecore: real-time voice agents on local models (VAD → STT → LLM → TTS).

    Run the demo call with `voicecore demo`; talk to an agent from a WAV file with
    `voicecore run`, or in text with `voicecore chat`.
    """
    setup_logging(verbose)


for command in (
    run.demo,
    run.run,
    run.chat,
    run.serve,
    calls.calls,
    data.tenants,
    data.subjects,
    data.optout,
    contacts.contacts,
    campaigns.campaigns,
    data.retention,
    data.audit,
    data.policy,
    providers.providers,
    db.db,
    bench.bench,
):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="voicecore")
