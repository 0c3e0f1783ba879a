"""HF checkpoint -> GGUF -> quantized GGUFs, with llama.cpp's own tools, into prom-local's model store.

    prom-local convert nayohan/llama3-8b-it-prometheus-ko

Modules: source (hub/local, allowed files, pickle policy), gguf16 (llama.cpp's converter), quantize
(llama_model_quantize), imatrix (importance matrix from judge prompts), pipeline (stages, resume),
_proc (the child processes). convert/ uses the library (the store's manifest, sha256, stages and
`pull` live in prom_local); the library never imports convert/, and the CLI's `convert` command is
its entry point. Kept import-light: torch and transformers only ever load in the converter's own process.
"""
