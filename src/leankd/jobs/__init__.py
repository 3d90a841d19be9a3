"""Jobs: a job spec decided when the experiment is planned, run as a fixed sequence of small steps."""
