"""The checkpoint kinds and output dtypes ``drive-vlm convert`` accepts (no torch import)."""

KINDS = ('drivemm', 'drivelmm-o1', 'impromptu-vla')
DTYPE_NAMES = ('auto', 'bf16', 'bfloat16', 'fp16', 'float16', 'fp32', 'float32')
