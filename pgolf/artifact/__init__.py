"""The artifact: the file format, export from a trained model (with size accounting) and back."""
