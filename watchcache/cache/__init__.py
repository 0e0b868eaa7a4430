"""The watch-fed cache: reflector, store, hub, our continue tokens; no HTTP, no transport."""
