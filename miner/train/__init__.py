"""Training: classification, MSA initialisation, attention mining with knowledge preservation."""
