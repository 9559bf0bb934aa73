"""lmtune ui: the web page over a runs directory (app.py) and the training processes it starts (processes.py)."""
