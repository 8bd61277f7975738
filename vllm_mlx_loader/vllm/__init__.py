"""The vLLM side: the only package here that imports vLLM. `loader` is the `BaseModelLoader`, `engine_hook`
prepares the engine arguments, `device_logits` runs an engine for `validate`
(`logits_capture` is its worker side), and `compat` holds every
private vLLM API they use. Nothing below this package imports vLLM."""
