# Source this before running vLLM 0.18's CPU backend from .venv-vllm018: its worker refuses to start
# without tcmalloc and the Intel OpenMP runtime preloaded, and it sizes its KV cache from
# VLLM_CPU_KVCACHE_SPACE (GiB), not from gpu_memory_utilization.
_venv=${VENV018:-.venv-vllm018}
_tcmalloc=$(ldconfig -p | awk '/libtcmalloc_minimal\.so\.4 /{print $NF; exit}')
_iomp=$(ls "$(cd "$_venv" && pwd)"/lib/libiomp5.so 2>/dev/null || true)
export LD_PRELOAD="${_tcmalloc}${_iomp:+:$_iomp}${LD_PRELOAD:+:$LD_PRELOAD}"
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
unset _venv _tcmalloc _iomp
