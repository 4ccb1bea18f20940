"""voicecore's benchmarks: turn latency, side by side with stock Pipecat, concurrency, runtime overhead.

Each module has a ``run(...)`` function that the ``voicecore bench ...`` command calls;
``README.md`` in this folder documents what each one measures and its JSON output.
"""
