"""One folder per venue: everything venue-specific, behind one adapter each."""
