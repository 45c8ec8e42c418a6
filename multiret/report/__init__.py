"""Research reports above the pipeline: comparison tables, significance, the study commands and their page."""
