"""Test peers for voicecore: provider media-stream callers that speak each provider's protocol."""
