"""Print the CUDA toolkit root of the `nvcc` on the PATH (nvcc may be a wrapper script), or nothing."""

import os
import re
import shutil

nvcc = shutil.which("nvcc")
if nvcc:
    real = os.path.realpath(nvcc)
    with open(real, "rb") as f:
        head = f.read(4096)
    m = re.search(rb"(/[^\s\"']+)/bin/nvcc", head) if head.startswith(b"#!") else None
    print(m.group(1).decode() if m else os.path.dirname(os.path.dirname(real)))
