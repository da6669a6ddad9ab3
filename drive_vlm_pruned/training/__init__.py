"""Training the embedded driving VLM (``drive-vlm train vlm``); inference never imports this."""
