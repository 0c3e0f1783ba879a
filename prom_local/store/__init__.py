"""The model store: where GGUFs live and how names resolve, the manifest, `pull` from the hub, the hub's
errors in plain words, long store stages, and the rubrics users save."""
