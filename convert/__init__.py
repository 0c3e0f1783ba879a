"""HF checkpoint -> GGUF -> quantized GGUFs, with llama.cpp's own tools, into prom-local's model store.

    prom-local convert nayohan/llama3-8b-it-prometheus-ko      # or: python -m convert ...
    prom-local pull prometheus-ko:Q4_K_M

Modules: source (hub/local, allowed files, pickle policy), gguf16 (llama.cpp's converter), quantize
(llama_model_quantize), imatrix (importance matrix from judge prompts), manifest (sha256,
manifest.json), pipeline (stages, disk checks, resume), pull (ready GGUFs from the hub).
Kept import-light: torch and transformers only ever load in the converter's own process.
"""
