"""Data: built-in datasets, documents from files through HF `datasets`, collation into batches."""
