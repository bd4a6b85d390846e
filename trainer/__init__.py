"""A thin training loop that resumes mid-epoch bit-exactly from one checkpoint file."""
