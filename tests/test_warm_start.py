"""``serve`` warms the default pipeline at start: its models are loaded and its greeting's audio is
synthesised, so the first call is greeted from the cache like the tenth (issue 15, item 4)."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from voicecore.config import load_pipeline
from voicecore.server.app import create_app
from voicecore.services.tts import speakable
from voicecore.storage import Store

RECEPTIONIST = Path(__file__).resolve().parent.parent / "pipelines" / "receptionist.yaml"


@pytest.mark.models
async def test_serve_synthesises_the_default_pipelines_greeting_at_start(pool, tmp_path: Path) -> None:  # noqa: ANN001
    base = load_pipeline(RECEPTIONIST)
    # a greeting of its own, so no earlier test has cached it
    config = base.model_copy(update={"greeting": f"Hello, you reached desk {secrets.token_hex(3)}. How can I help?"})
    tts = pool.for_pipeline(config).tts
    key = (speakable(config.greeting), config.voice.length_scale, config.voice.speaker_id)
    assert not tts.cached(*key)
    store = Store(tmp_path / "data")
    app = create_app(data_dir=tmp_path / "data", pool=pool, store=store, pipeline=config.name,
                     pipelines={config.name: config}, preload=True)  # fmt: skip
    try:
        async with app.router.lifespan_context(app):
            assert tts.cached(*key), "the greeting was not synthesised when serve started"
    finally:
        store.close()


@pytest.mark.models
async def test_without_preload_nothing_is_synthesised_at_start(pool, tmp_path: Path) -> None:  # noqa: ANN001
    config = load_pipeline(RECEPTIONIST).model_copy(update={"greeting": f"Hi from desk {secrets.token_hex(3)}."})
    tts = pool.for_pipeline(config).tts
    store = Store(tmp_path / "data")
    app = create_app(data_dir=tmp_path / "data", pool=pool, store=store, pipeline=config.name,
                     pipelines={config.name: config}, preload=False)  # fmt: skip
    try:
        async with app.router.lifespan_context(app):
            assert not tts.cached(speakable(config.greeting), config.voice.length_scale, config.voice.speaker_id)
    finally:
        store.close()
