"""Reports: comparison tables of teacher, plain and distilled arms, built from the stored rows."""
