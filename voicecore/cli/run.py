"""``voicecore demo``, ``run``, ``chat`` and ``serve``: calls on the embedded models, and the server.

Each starts its calls through :func:`voicecore.session.open_call` (via
:mod:`voicecore.simulate` for the local ones), the road every call takes.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import click

from voicecore.cli.options import (
    data_dir_option,
    database_url,
    load_pipeline_or_fail,
    model_pool,
    resolve_data_dir,
)
from voicecore.config import ConfigError
from voicecore.storage import CryptoError, StorageError
from voicecore.views import (
    latency_table,
    live_call_view,
    transcript_text,
    turn_timelines,
)


@click.command()
@click.option("--pipeline", "pipeline", default="receptionist", show_default=True,
              help="Agent definition: a name in pipelines/ or a YAML path.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("out"),
              show_default=True, help="Folder for the agent's audio (demo-agent.wav).")
@click.option("--fast", is_flag=True, help="Do not wait for real time (latency figures then show compute only).")
@click.option("--json", "as_json", is_flag=True, help="Print the call as JSON instead of tables.")
def demo(pipeline: str, out_dir: Path, fast: bool, as_json: bool) -> None:
    """A whole simulated call on the embedded default models.

    A scripted caller (spoken audio from espeak-ng, a voice unlike the agent's)
    asks the receptionist about opening hours and books an appointment. Prints
    the transcript and a per-turn latency table; writes the agent's audio.
    """
    from voicecore.simulate import run_demo

    config = load_pipeline_or_fail(pipeline)
    result = asyncio.run(run_demo(config, model_pool(), out_dir, realtime=not fast))
    if as_json:
        click.echo(json.dumps(live_call_view(result.record, str(result.audio_path)), indent=2))
        return
    click.echo("\nTranscript")
    click.echo(transcript_text(result.record))
    click.echo("\nLatency per turn")
    click.echo(latency_table(turn_timelines(result.record)))
    click.echo(f"\nAgent audio: {result.audio_path}")
    if result.calendar_path is not None and result.calendar_path.exists():
        click.echo(f"Calendar: {result.calendar_path}")


@click.command()
@click.argument("pipeline")
@click.option("--audio", "audio_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Caller audio: a WAV file at any sample rate, mono or stereo.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write what the agent said to this WAV file.")
@click.option("--json", "as_json", is_flag=True, help='Print {"turns": [...], "audio_out": ...} as JSON.')
@click.option("--fast", is_flag=True, help="Stream the file as fast as the pipeline takes it, not in real time.")
@click.option("--no-greeting", is_flag=True, help="Skip the agent's greeting.")
def run(pipeline: str, audio_path: Path, out_path: Path | None, as_json: bool, fast: bool, no_greeting: bool) -> None:
    """Stream a WAV file into PIPELINE as if a caller said it; print what the agent answered."""
    from voicecore.simulate import run_call
    from voicecore.transports.file import AudioFileError, read_audio

    config = load_pipeline_or_fail(pipeline)
    try:
        audio = read_audio(audio_path)
    except AudioFileError as e:
        raise click.ClickException(str(e)) from None
    record, transport, _ = asyncio.run(
        run_call(config, model_pool(), [audio], realtime=not fast, greet=not no_greeting)
    )
    if out_path is not None:
        transport.save(out_path)
    if as_json:
        click.echo(json.dumps(live_call_view(record, str(out_path) if out_path else None), indent=2))
        return
    click.echo(transcript_text(record))
    click.echo()
    click.echo(latency_table(turn_timelines(record)))
    if out_path is not None:
        click.echo(f"\nAgent audio: {out_path}")


@click.command()
@click.argument("pipeline")
@click.option("-m", "--message", "messages", multiple=True,
              help="Say this instead of reading from the terminal (repeatable).")
def chat(pipeline: str, messages: tuple[str, ...]) -> None:
    """Type as the caller, read the agent's answers (the call's LLM and policy path, in text)."""
    from voicecore.simulate import TextCall

    config = load_pipeline_or_fail(pipeline)
    pool = model_pool()

    async def loop() -> None:
        call = await TextCall.open(config, pool)
        if config.greeting:
            click.echo(f"agent: {await call.next_reply()}")
        lines = iter(messages) if messages else None
        while not call.ended:
            if lines is not None:
                text = next(lines, None)
                if text is None:
                    break
                click.echo(f"you: {text}")
            else:
                try:
                    text = input("you: ")
                except EOFError:
                    break
            text = text.strip()
            if not text:
                continue
            if text.lower() in {"/quit", "/exit"}:
                break
            reply, stats = await call.say(text)
            if reply is None:
                break
            click.echo(f"agent: {reply}")
            if stats is not None:
                first = (stats.first_token_s or 0) * 1000
                click.echo(click.style(f"       ({first:.0f} ms to first token, {stats.evaluated_prompt_tokens}/"
                                       f"{stats.prompt_tokens} prompt tokens evaluated)", dim=True))
        await call.close()

    asyncio.run(loop())


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8765, show_default=True, type=int, help="Port to listen on.")
@data_dir_option
@click.option("--pipeline", default="receptionist", show_default=True,
              help="Default agent for calls that do not name one (a name in pipelines/ or a YAML path).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
              default=None, help="voicecore's and uvicorn's log level (default: info, or $VOICECORE_LOG_LEVEL).")
@click.option("--allow-insecure-webhooks", is_flag=True,
              help="Let webhook endpoints use http:// and private or loopback addresses (local development only).")
@click.option("--public-url", envvar="VOICECORE_PUBLIC_URL", default=None, metavar="URL",
              help="The public https://host[:port] providers reach this server at (or $VOICECORE_PUBLIC_URL); "
                   "every URL given to a provider derives from it, wss:// for media.")
@click.option("--telnyx-codec", type=click.Choice(["PCMU", "PCMA", "L16"]), default="PCMU", show_default=True,
              help="What Telnyx streams are set up to take back (stream_bidirectional_codec).")
@click.option("--telnyx-sample-rate", type=click.Choice(["8000", "16000", "22050", "24000", "48000"]),
              default="8000", show_default=True, help="stream_bidirectional_sampling_rate (L16 only).")
@click.option("--max-calls", type=click.IntRange(min=1), default=None, envvar="VOICECORE_MAX_CALLS",
              help="Calls this worker takes at once; beyond it new streams are refused (close 1013) and "
                   "GET /healthz/ready answers 503. Default: no limit.")
@click.option("--drain-timeout", "drain_timeout", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="Seconds calls in progress may go on after SIGTERM (no new calls meanwhile); 0 ends them at once.")
@click.option("--lease-seconds", "lease_s", type=click.FloatRange(min=0.3, max=3600), default=15.0,
              show_default=True, envvar="VOICECORE_LEASE_SECONDS",
              help="This worker's lease in the database, renewed every third of it: a worker silent longer is "
                   "dead, and another worker closes its open calls as worker_lost.")
def serve(host: str, port: int, data_dir: Path | None, pipeline: str, log_level: str | None,
          allow_insecure_webhooks: bool, public_url: str | None, telnyx_codec: str,
          telnyx_sample_rate: str, max_calls: int | None, drain_timeout: float, lease_s: float) -> None:  # fmt: skip
    """Host telephony media streams (Twilio, Telnyx, Vonage, Plivo, Exotel, Asterisk) on WebSockets.

    \b
    WS       /ws/{twilio,telnyx,vonage,plivo,exotel,asterisk}   media streams
    GET|POST /providers/{provider}/{tenant}/answer             the providers' answer URLs
    GET      /healthz, /healthz/ready, /metrics
    SIGTERM drains: no new calls, the calls in progress finish (--drain-timeout).
    Each worker holds a lease (--lease-seconds); the calls of a dead worker are closed
    as worker_lost by another.
    Create a tenant first (voicecore tenants add NAME), store its provider credentials
    (voicecore providers set ...) and paste what `voicecore providers snippet` prints.
    """
    import os

    from voicecore.server import serve as run_server
    from voicecore.server.logs import setup_logging

    level = (log_level or os.environ.get("VOICECORE_LOG_LEVEL") or "info").upper()
    setup_logging(level)
    if public_url is not None:
        from voicecore.telephony.snippets import check_public_url

        try:
            public_url = check_public_url(public_url)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--public-url") from None
    try:
        run_server(host, port, resolve_data_dir(data_dir), pipeline, log_level=level,
                   allow_insecure_webhooks=allow_insecure_webhooks, public_url=public_url,
                   database_url=database_url() or "",
                   telnyx_codec=telnyx_codec, telnyx_sample_rate=int(telnyx_sample_rate),
                   max_calls=max_calls, drain_timeout_s=drain_timeout, lease_s=lease_s)  # fmt: skip
    except (ConfigError, StorageError, CryptoError, ValueError) as e:  # ValueError: a bad VOICECORE_WEBHOOK_* value
        raise click.ClickException(str(e)) from None
