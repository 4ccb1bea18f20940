"""Outbound calls. ``windows`` and ``checks`` are the pure decisions taken before every dial:
the callee's calling window in their own time zones, public holidays, attempt caps, opt-outs
and concurrency (no clock, no storage, no I/O: the dialer passes in what it knows)."""
