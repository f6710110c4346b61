"""Runtimes: what turns a sandbox record into an isolated, running machine."""
