# -*- Python -*-
import os

import lit.formats
from lit.llvm import llvm_config
from lit.llvm.subst import ToolSubst

config.name = "MOE"
config.test_format = lit.formats.ShTest(not llvm_config.use_lit_shell)
config.suffixes = [".mlir", ".test"]
config.excludes = ["CMakeLists.txt", "README.md", "lit.cfg.py", "lit.site.cfg.py"]
config.test_source_root = os.path.dirname(__file__)
config.test_exec_root = os.path.join(config.moe_obj_root, "test")

config.substitutions.append(("%PATH%", config.environment["PATH"]))
config.substitutions.append(("%moe_src_root", config.moe_src_root))

llvm_config.with_system_environment(["HOME", "INCLUDE", "LIB", "TMP", "TEMP"])
llvm_config.use_default_substitutions()

tool_dirs = [config.moe_tools_dir, config.llvm_tools_dir]
tools = ["moe-opt", "moe-import", "moe-run", "moe-compile", "not", "split-file", "llvm-nm", "count"]
# The libFuzzer targets exist in builds configured with MOE_ENABLE_FUZZERS
# (scripts/setup.sh does); elsewhere their bounded runs are unsupported.
if config.moe_enable_fuzzers:
    config.available_features.add("fuzzers")
    tools += ["moe-import-fuzzer", "moe-safetensors-fuzzer"]
llvm_config.add_tool_substitutions(tools, tool_dirs)

# The interpreter running lit is Debian's python3, which has python3-numpy
# (the NumPy reference needs it); a python3 earlier on PATH may not.
import sys
config.substitutions.append(("%python", sys.executable))

config.substitutions.append(("%moe_obj_root", config.moe_obj_root))
config.substitutions.append(("%moe_cxx", config.moe_cxx))

# Building an application against a compiled model and the runtime.
config.substitutions.append(("%moert_cxx", "%s -std=c++17 -I%s -I%s" % (
    config.moe_cxx, os.path.join(config.moe_src_root, "runtime", "include"),
    config.llvm_include_dir)))
config.substitutions.append(("%moert_link", " ".join([
    os.path.join(config.moe_obj_root, "runtime", "libMoERuntime.a"),
    os.path.join(config.moe_obj_root, "runtime", "libMoECpuKernels.a"),
    "-L" + config.llvm_lib_dir, "-Wl,-rpath," + config.llvm_lib_dir,
    "-lLLVM", "-lpthread"])))

# CUDA: the toolkit (ptxas, fatbinary) lets every model compile for the GPU
# here; tests that run on a GPU need a device and are reported unsupported
# (skipped) without one.
import shutil
import subprocess
cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
cuda_bin = [os.path.join(cuda_home, "bin"), "/usr/local/cuda/bin"]
def find_cuda_tool(name):
    for d in cuda_bin:
        if os.access(os.path.join(d, name), os.X_OK):
            return os.path.join(d, name)
    return shutil.which(name)
if find_cuda_tool("ptxas") and find_cuda_tool("fatbinary"):
    config.available_features.add("ptxas")
def has_cuda_device():
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout
def cuda_compute_capability():
    # "9.0" for an H100 or H200 (the chips sm_90a code runs on).
    try:
        out = subprocess.run([shutil.which("nvidia-smi"), "--query-gpu=compute_cap",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.splitlines()[0].strip() if out.returncode == 0 and out.stdout else ""
if has_cuda_device():
    config.available_features.add("cuda-device")
    if cuda_compute_capability() == "9.0":
        config.available_features.add("cuda-sm90a")
    sanitizer = find_cuda_tool("compute-sanitizer")
    if sanitizer:
        config.available_features.add("compute-sanitizer")
        config.substitutions.append(("%compute_sanitizer", sanitizer))
