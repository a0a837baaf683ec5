"""The end-to-end demo: corpus -> curation -> training -> cascade -> one HTML page."""
