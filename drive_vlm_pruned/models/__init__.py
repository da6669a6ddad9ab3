"""VLM families behind one small adapter interface, plus loading and tiny checkpoints."""
