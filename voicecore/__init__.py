"""voicecore: a real-time voice agent runtime on local models, with a per-tenant privacy policy layer."""

__version__ = "0.1.0"
