"""HTTP transport only: parse, call one service method, serialize."""
