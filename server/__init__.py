"""The emo-stream application layer: CLI, HTTP/WebSocket server, sessions. Depends on emo_stream."""
