"""Models out of the toolkit: GGUF files for llama.cpp and Ollama, bitsandbytes-quantized folders."""
