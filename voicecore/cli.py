"""The ``voicecore`` command. Every verb is a thin call into the library (as the tests and HTTP API use it)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import click
from loguru import logger

from voicecore.config import ConfigError, PipelineConfig, load_pipeline, resolve_pipeline_path


def setup_logging(verbose: int = 0) -> None:
    """INFO by default (model loading progress, call start/end — never call content)."""
    level = os.environ.get("VOICECORE_LOG_LEVEL") or ("DEBUG" if verbose >= 1 else "INFO")
    logger.remove()
    logger.add(sys.stderr, level=level, format="<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> {message}")


def _load(pipeline: str) -> PipelineConfig:
    try:
        return load_pipeline(resolve_pipeline_path(pipeline))
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


def _pool():
    from voicecore.models import ModelPool

    try:
        return ModelPool()
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="Debug logs (never call content at INFO).")
@click.version_option(package_name="voicecore")
def cli(verbose: int) -> None:
    """voicecore: real-time voice agents on local models (VAD → STT → LLM → TTS).

    Run the demo call with `voicecore demo`; talk to an agent from a WAV file with
    `voicecore run`, or in text with `voicecore chat`.
    """
    setup_logging(verbose)


@cli.command()
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
    from voicecore.demo import run_demo
    from voicecore.reporting import call_json, latency_table, transcript_text, turn_timelines

    config = _load(pipeline)
    pool = _pool()
    result = asyncio.run(run_demo(config, pool, out_dir, realtime=not fast))
    if as_json:
        click.echo(json.dumps(call_json(result.record, str(result.audio_path)), indent=2))
        return
    click.echo("\nTranscript")
    click.echo(transcript_text(result.record))
    click.echo("\nLatency per turn")
    click.echo(latency_table(turn_timelines(result.record)))
    click.echo(f"\nAgent audio: {result.audio_path}")


@cli.command()
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
    from voicecore.reporting import call_json, latency_table, transcript_text, turn_timelines
    from voicecore.simulate import AudioFileError, read_audio, run_call

    config = _load(pipeline)
    try:
        audio = read_audio(audio_path)
    except AudioFileError as e:
        raise click.ClickException(str(e)) from None
    pool = _pool()
    record, transport, _ = asyncio.run(run_call(config, pool, [audio], realtime=not fast, greet=not no_greeting))
    if out_path is not None:
        transport.save(out_path)
    if as_json:
        click.echo(json.dumps(call_json(record, str(out_path) if out_path else None), indent=2))
        return
    click.echo(transcript_text(record))
    click.echo()
    click.echo(latency_table(turn_timelines(record)))
    if out_path is not None:
        click.echo(f"\nAgent audio: {out_path}")


@cli.command()
@click.argument("pipeline")
@click.option("-m", "--message", "messages", multiple=True,
              help="Say this instead of reading from the terminal (repeatable).")
def chat(pipeline: str, messages: tuple[str, ...]) -> None:
    """Type as the caller, read the agent's answers (the LLM and policy path without audio)."""
    from voicecore.session import TextChat

    config = _load(pipeline)
    session = TextChat(config, _pool())

    async def loop() -> None:
        if config.greeting:
            click.echo(f"agent: {config.greeting}")
        lines = iter(messages) if messages else None
        while True:
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
            reply, stats = await session.reply(text)
            first = (stats.first_token_s or 0) * 1000
            click.echo(f"agent: {reply}")
            click.echo(click.style(f"       ({first:.0f} ms to first token, {stats.evaluated_prompt_tokens}/"
                                   f"{stats.prompt_tokens} prompt tokens evaluated)", dim=True))
        session.close()

    asyncio.run(loop())


from voicecore import cli_admin as _cli_admin  # noqa: E402,F401  (registers the data verbs)
from voicecore import bench as _bench  # noqa: E402,F401  (registers `voicecore bench`)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8765, show_default=True, type=int, help="Port to listen on.")
@_cli_admin.data_dir_option
@click.option("--pipeline", default="receptionist", show_default=True,
              help="Default agent for calls that do not name one (a name in pipelines/ or a YAML path).")
def serve(host: str, port: int, data_dir: Path | None, pipeline: str) -> None:
    """Host telephony media streams (Twilio, Telnyx, Vonage, Plivo, Exotel, Asterisk) on WebSockets.

    \b
    WS   /ws/{twilio,telnyx,vonage,plivo,exotel,asterisk}
    POST /twilio/voice?token=KEY   TwiML <Connect><Stream> for Twilio's voice webhook
    GET  /healthz, /metrics
    Create a tenant and its API key first: voicecore tenants add NAME.
    """
    from voicecore.server import serve as run_server
    from voicecore.storage.db import default_data_dir

    try:
        run_server(host, port, data_dir or default_data_dir(), pipeline)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None



def main() -> None:
    cli(prog_name="voicecore")


if __name__ == "__main__":
    main()
