"""The sandbank server: HTTP API, service layer, store and runtime wiring."""
