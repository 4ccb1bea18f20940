"""Outbound calling: contact files, calling windows and the checks made before every dial.

Pure decisions and parsers (no storage, no sockets); the dialer and the contact store call them.
"""
