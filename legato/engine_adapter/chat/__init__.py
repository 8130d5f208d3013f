"""Chat features shared by the engine server and Legato's proxy: tool-call formats (rendering and
parsing), output grammars (response_format, forced tool calls) and the response builder."""
