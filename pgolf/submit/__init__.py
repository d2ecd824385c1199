"""The single-file submission bundler: a finished run becomes a records folder whose
``train_gpt.py`` runs without pgolf (``pgolf submit``)."""
