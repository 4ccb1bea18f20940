"""Outbound calls: contact files (``contacts_csv``), and the pure decisions taken before every
dial (``windows``, ``checks``): the callee's calling window in their own time zones, public
holidays, attempt caps, opt-outs and concurrency. No clock, no storage, no I/O: the contact store
and the dialer pass in what they know."""
