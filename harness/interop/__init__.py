"""Other tools' results in and out: importers that turn llama-bench, llama-batched-bench, vLLM's
benchmarks, GuideLLM and AIPerf outputs into run documents, and exporters to their formats."""
