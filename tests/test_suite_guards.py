"""The guards every test runs under (``tests/suite_guards.py``, installed by ``conftest.py``):
a test not marked ``models`` that loads a model fails; a key, token, webhook secret or caller
sentence in a log record at INFO or above fails the test, naming the logger and level and
never showing the secret.

Directly (the guard objects), and end to end: a small test suite run by pytest in a real
process with this conftest, whose outcomes are read back.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import suite_guards as guards
from loguru import logger

from voicecore.model_pool import ModelPool

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
KEY = "vck_0123456789ab_" + "S3cr3tPart" * 4  # the format of a tenant API key
OLD_TOKEN = "ct_" + "T0kenPart" * 3
NEW_TOKEN = "ct" + "0123456789abcdef" * 2 + "01234567"  # letters and digits only, 40 after "ct"
WEBHOOK_SECRET = "whsec_" + "W3bh00k" * 5
STREAM_SECRET = "vcs" + "0a1b2c3d4e5f" + "9" * 48  # a provider stream secret
ALLOW_INSECURE_WEBHOOKS = True  # the store fixture: a webhook to 127.0.0.1


# --------------------------------------------------------------------------- the model guard, directly


def test_an_unmarked_test_that_loads_a_model_fails_before_anything_loads(request) -> None:
    pool = ModelPool()
    with pytest.raises(guards.UnmarkedModelLoad, match=r"test_an_unmarked_test.*ModelPool\.llm\(default\).*not marked `models`"):
        pool.llm("default")
    assert pool._models == {}  # refused before the load
    from voicecore.services.stt import WhisperEngine

    with pytest.raises(guards.UnmarkedModelLoad, match=r"WhisperEngine\(/nowhere\)"):
        WhisperEngine("/nowhere", None)  # type: ignore[arg-type]
    # both were noted: the test fails at teardown even where the error was caught
    noted = guards.MODEL_GUARD.take_violations()
    assert len(noted) == 2 and all(request.node.nodeid in v for v in noted)


# --------------------------------------------------------------------------- the log check, directly


def test_the_log_check_finds_secrets_by_format_and_names_logger_and_level_without_the_secret() -> None:
    # (loggers the server's redaction does not filter: once a server test ran, loguru's lines and
    # those of uvicorn's loggers come redacted — which is the point of it)
    watch = guards.LOG_WATCH
    assert watch.check() == ""  # nothing so far in this test
    logging.getLogger("voicecore.test.keys").info("issued %s to the tenant", KEY)
    uvicornish = logging.getLogger("voicecore.test.uvicornish")
    uvicornish.propagate = False  # as uvicorn's loggers: their records never reach the root logger
    try:
        uvicornish.warning("GET /ws/twilio?token=%s", OLD_TOKEN)
    finally:
        uvicornish.propagate = True
    quiet = logging.getLogger("voicecore.test.quiet")
    quiet.propagate = False
    try:
        quiet.error("token %s and %s", NEW_TOKEN, WEBHOOK_SECRET)
    finally:
        quiet.propagate = True
    logging.getLogger("websockets.server").warning("stream secret %s created", STREAM_SECRET)
    logger.debug(f"DEBUG lines are not checked: {KEY}")
    logging.getLogger("websockets.server").debug("nor are stdlib DEBUG records: %s", KEY)
    problems = watch.check()
    assert "logging logger 'voicecore.test.keys' at INFO logged an API key" in problems
    assert "logging logger 'voicecore.test.uvicornish' at WARNING logged a call token" in problems
    assert "logging logger 'voicecore.test.quiet' at ERROR" in problems
    assert "a webhook secret" in problems and problems.count("a call token") >= 2
    assert "at WARNING logged a stream secret" in problems
    for secret in (KEY, OLD_TOKEN, NEW_TOKEN, WEBHOOK_SECRET, STREAM_SECRET, KEY.split("_", 2)[2]):
        assert secret not in problems, "the failure message shows a secret"
    assert guards.mask(KEY) in problems
    assert problems.count("\n  ") == 4  # one line per record (DEBUG ones not among them)
    assert watch.check() == ""  # checked records are gone


def test_secrets_created_in_the_run_are_found_literally_and_caller_sentences_too(store) -> None:
    key = store.tenants.create("guarded", actor="test")  # noted by the spy on create_api_key
    secret_part = key.split("_", 2)[2]
    _endpoint, wh_secret = store.outbox.create_webhook("guarded", "http://127.0.0.1:9/x", actor="test")
    guards.LOG_WATCH.add_sentence("I would like to book a cleaning for Tuesday.")
    auth_token = "f" * 8 + "0123456789abcdef" * 1 + "e" * 8
    store.providers.set("guarded", "twilio", {"auth_token": auth_token, "account_sid": "AC" + "1" * 32}, actor="test")
    logger.info(f"the random part alone: {secret_part}")
    logger.info(f"checking a signature with {auth_token}")
    logger.info("an account id is no secret: AC" + "1" * 32)
    logger.warning(f"the webhook secret without its prefix: {wh_secret.removeprefix('whsec_')}")
    logger.info("caller said: I WOULD LIKE to book a cleaning  for Tuesday")
    logger.info("a sentence of the agent's own is fine: we are open on Tuesday")
    problems = guards.LOG_WATCH.check()
    assert problems.count("a secret created in this test run") == 3
    assert "at WARNING" in problems and "a caller sentence" in problems
    assert secret_part not in problems and wh_secret.removeprefix("whsec_") not in problems
    assert auth_token not in problems
    assert problems.count("\n  ") == 4


def test_the_loguru_sink_survives_logger_remove() -> None:
    guards.LOG_WATCH.add_secret(KEY)  # as if this process had created it
    logger.remove()  # what the CLI's setup_logging does
    logger.add(sys.stderr, level="WARNING")
    logger.info(f"after remove: {KEY.split('_', 2)[2]}")  # the bare secret: no redaction pattern knows it
    problems = guards.LOG_WATCH.check()
    assert "loguru logger 'test_suite_guards' at INFO logged a secret created in this test run" in problems


# --------------------------------------------------------------------------- end to end, in a pytest process

INNER_TESTS = '''
import logging

import pytest
from loguru import logger

from voicecore.model_pool import ModelPool


def test_unmarked_loads_a_model_and_swallows_the_error():
    try:
        ModelPool().tts("default")
    except Exception:
        pass  # a server thread would log it and go on


@pytest.mark.models
def test_marked_may_load():
    from voicecore.services.vad import SmartTurnEngine
    import suite_guards

    with pytest.raises(Exception) as e:
        SmartTurnEngine(model_path="/nowhere/smart-turn.onnx")  # the loader itself refuses the path
    assert not isinstance(e.value, suite_guards.UnmarkedModelLoad)


def test_logs_a_key_it_created(store):
    key = store.tenants.create("inner", actor="test")
    logger.info(f"tenant key is {key}")


def test_logs_a_token_through_the_stdlib():
    logging.getLogger("aiohttp.access").info("POST /twilio/voice -> token ct_%s", "Z" * 24)


def test_clean():
    logger.info("call started (twilio, pipeline receptionist)")
'''


@pytest.fixture(scope="module")
def inner_run(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess:
    """The suite above, run by pytest in a real process with this conftest and its guards."""
    d = tmp_path_factory.mktemp("inner-suite")
    for name in ("conftest.py", "suite_guards.py"):
        shutil.copy(TESTS / name, d / name)
    (d / "pytest.ini").write_text("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = session\n"
                                  "markers =\n    models: real models\n")  # fmt: skip
    (d / "test_inner.py").write_text(textwrap.dedent(INNER_TESTS))
    env = {k: v for k, v in os.environ.items() if k not in ("VOICECORE_MASTER_KEY", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "--show-capture=no", "-p", "no:logging",
                           "-p", "no:cacheprovider", str(d)],
                          cwd=d, env=env, capture_output=True, text=True, check=False, timeout=300)  # fmt: skip


def outcome(run: subprocess.CompletedProcess, test: str) -> set[str]:
    """The short-summary words (PASSED, FAILED, ERROR) pytest printed for ``test``."""
    return {line.split()[0] for line in run.stdout.splitlines() if line.split()[:1] and f"::{test}" in line
            and line.split()[0] in ("PASSED", "FAILED", "ERROR", "SKIPPED")}  # fmt: skip


def test_in_a_real_run_a_swallowed_model_load_still_fails_the_unmarked_test(inner_run) -> None:
    out = inner_run.stdout
    assert outcome(inner_run, "test_unmarked_loads_a_model_and_swallows_the_error") == {"PASSED", "ERROR"}, out
    assert "test_unmarked_loads_a_model_and_swallows_the_error loads a model (ModelPool.tts(default))" in out
    assert outcome(inner_run, "test_marked_may_load") == {"PASSED"}, out
    assert outcome(inner_run, "test_clean") == {"PASSED"}, out


def test_in_a_real_run_a_logged_secret_fails_the_test_without_being_shown(inner_run) -> None:
    out = inner_run.stdout + inner_run.stderr
    assert outcome(inner_run, "test_logs_a_key_it_created") == {"PASSED", "ERROR"}, out
    assert "loguru logger 'test_inner' at INFO logged an API key vck_" in out
    assert outcome(inner_run, "test_logs_a_token_through_the_stdlib") == {"PASSED", "ERROR"}, out
    assert "logging logger 'aiohttp.access' at INFO logged a call token ct_Z" in out
    assert "Z" * 24 not in inner_run.stdout.replace("ct_%s", "")  # the token is only shown masked
    assert inner_run.returncode == 1


def test_what_the_suite_prints_of_a_leaked_record_is_masked(caplog: pytest.LogCaptureFixture) -> None:
    """pytest shows a failed test's captured log records: the leaked secret is masked there too."""
    caplog.set_level(logging.INFO)
    logging.getLogger("voicecore.test.caplog").info("key %s", KEY)
    (record,) = [r for r in caplog.records if r.name == "voicecore.test.caplog"]
    assert KEY not in record.getMessage() and guards.mask(KEY) in record.getMessage()
    assert "an API key" in guards.LOG_WATCH.check()  # and the test still fails for it
