"""The bookkeeping modules stay plain Python: importing them must not import torch."""

from __future__ import annotations

import subprocess
import sys


def test_sequence_block_manager_scheduler_and_batch_import_no_torch():
    code = (
        "import sys\n"
        "import chatforge.engine.sequence, chatforge.engine.block_manager, chatforge.engine.scheduler, chatforge.engine.batch\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
