"""Records -> prompt -> verdict -> grade: rubrics, prompt profiles, the chat template, prompt and verdict
tokens, absolute and pairwise grading, samples, the `Judge` facade, prometheus-eval compatible calls.

Uses engine/ for tokens and generation; knows nothing of files, the model store or runs."""
