"""The local write-back cache: journal (what is pending), data files, uploader."""
