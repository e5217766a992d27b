"""A libtorch failure during a valid call (here: out of memory) raises ``ByolRuntimeError``, a
``RuntimeError``, and leaves the learner exactly as it was.

The allocation is made to fail with an address-space limit in a child process, so that it fails
the same way on any machine, however much memory it has (a merely huge allocation can succeed
under overcommit and bring in the OOM killer instead). Checked by hand against the code before
this test: the failure came back as a plain RuntimeError ("internal error"), so the first
assertion failed; and with `tch::no_grad` in place of the unwind-safe `model::no_grad`, the
allocation failed inside the target's forward, autograd stayed off on the thread, and the
recovery step failed ("element 0 of tensors does not require grad").
"""

import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import resource, torch, byol_rs

    torch.manual_seed(0)
    learner = byol_rs.BYOL("convnet", in_channels=1, projector_hidden=64, projection_dim=32, predictor_hidden=64,
                           total_steps=10, warmup_steps=0, batch_size=8)
    small = torch.rand(8, 1, 16, 16)
    learner.step(small, small.flip(-1))
    before = ({k: v.clone() for k, v in learner.named_parameters().items()},
              {k: v.clone() for k, v in learner.target_named_parameters().items()},
              {k: v.clone() for k, v in learner.optimizer_state().items()},
              learner.step_count)

    def vm_bytes():
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + (256 << 20), hard))  # 256 MB more than now
    big = torch.rand(1, 1, 64, 64).expand(4096, 1, 64, 64)  # a view: no memory yet; 2 GB of activations
    try:
        learner.step(big, big)
    except Exception as e:
        caught = e
    else:
        caught = None
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    assert isinstance(caught, byol_rs.ByolRuntimeError), repr(caught)
    assert isinstance(caught, RuntimeError) and not isinstance(caught, ValueError)
    assert "memory" in str(caught).lower(), str(caught)
    params, target, state, steps = before
    assert learner.step_count == steps
    for now, then in ((learner.named_parameters(), params), (learner.target_named_parameters(), target),
                      (learner.optimizer_state(), state)):
        assert all(torch.equal(now[k], then[k]) for k in then)
    learner.step(small, small.flip(-1))  # the learner still works
    assert learner.step_count == steps + 1
    print("ok")
""")


def test_out_of_memory_is_a_runtime_error_and_changes_nothing():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout[-2000:] + out.stderr[-3000:]
