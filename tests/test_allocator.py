"""relative_performer.allocator: a training step stops faulting in fresh pages once memory is kept."""

import json
import os
import statistics
import subprocess
import sys

import pytest

from relative_performer.allocator import ENV

PROBE = r"""
import json, resource, torch
from relative_performer.allocator import keep_freed_memory
applied = keep_freed_memory()
from relative_performer.models import create_model
torch.manual_seed(0)
torch.set_num_threads(1)
model = create_model(model="ExactRelativePerformer", dim=64, depth=1, heads=4)
optimizer = torch.optim.Adam(model.parameters())
images, labels = torch.rand(16, 1, 32, 32), torch.randint(0, 10, (16,))
faults = []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    optimizer.step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults}))
"""


def probe(setting: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if setting is not None:
        env[ENV] = setting
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_training_steps_after_the_first_reuse_memory_instead_of_faulting_in_pages():
    kept, default = probe(None), probe("default")
    assert kept["applied"] and not default["applied"]
    page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20
    # the median step after the first two (a later step may still grow a fragmented heap now and then)
    later_default = statistics.median(default["faults"][2:]) * page_mb
    later_kept = statistics.median(kept["faults"][2:]) * page_mb
    assert later_default > 100  # glibc's own policy: hundreds of MB of fresh pages per step
    assert later_kept < later_default / 20
