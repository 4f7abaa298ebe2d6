"""Test macros: one test source -> a CPU py_test, and GPU / TPU variants.

After TensorFlow's cuda_py_test / distribute_py_test: each variant gets its own
tags and environment, then a test_suite with the plain name groups them. Every
test gets `<name>_cpu`; GPU and TPU variants are opt-in
(`devices = ALL_DEVICES`), for the tests whose code runs on a device (training,
strategies), not for the ones that exercise files, processes or docs. The
default `bazel test` selects the CPU variants (.bazelrc filters out the `gpu`
and `tpu` tags); `--config=gpu` / `--config=tpu` select the others. A GPU or
TPU variant on a machine without that device skips every test case with a
stated reason (testing/device.py); it never passes vacuously.
"""

# For tests whose code runs on a device: also a GPU and a TPU variant.
ALL_DEVICES = ["cpu", "gpu", "tpu"]

_DEVICES = {
    "cpu": struct(
        # Hide any GPU so that the CPU variant really runs on the CPU.
        env = {"CUDA_VISIBLE_DEVICES": ""},
        tags = [],
    ),
    "gpu": struct(
        env = {},
        # `gpu` selects the variant (.bazelrc); `requires-gpu-nvidia` is the
        # TensorFlow tag that remote executors schedule on.
        tags = ["gpu", "requires-gpu-nvidia"],
    ),
    "tpu": struct(
        env = {},
        tags = ["tpu", "requires-tpu"],
    ),
}

def backup_restore_py_test(
        name,
        srcs,
        main = None,
        deps = [],
        data = [],
        args = [],
        env = {},
        tags = [],
        shard_count = None,
        size = "medium",
        timeout = None,
        devices = ["cpu"],
        **kwargs):
    """Emits `<name>_<device>` py_tests for each device, and test_suite(name).

    Args:
      name: base name; the variants are `<name>_cpu`, `<name>_gpu`, `<name>_tpu`.
      srcs: the test sources.
      main: the main source; defaults to srcs[0].
      deps: dependencies; //testing:device is added.
      data: runtime data.
      args: command-line arguments for every variant.
      env: environment for every variant (the device's own is added).
      tags: tags for every variant (the device's own are added).
      shard_count: passed through; absltest honours Bazel sharding.
      size: test size.
      timeout: test timeout.
      devices: which variants to emit: the CPU one (default), or
        ALL_DEVICES for a test that runs code on a device.
      **kwargs: passed to every py_test.
    """
    variants = []
    for device in devices:
        spec = _DEVICES[device]
        variant_env = dict(env)
        variant_env.update(spec.env)
        variant_env["BACKUP_RESTORE_TEST_DEVICE"] = device
        native.py_test(
            name = "%s_%s" % (name, device),
            srcs = srcs,
            main = main or srcs[0],
            deps = deps + ["//testing:device"],
            data = data,
            args = args,
            env = variant_env,
            tags = tags + spec.tags,
            shard_count = shard_count,
            size = size,
            timeout = timeout,
            python_version = "PY3",
            srcs_version = "PY3",
            **kwargs
        )
        variants.append(":%s_%s" % (name, device))

    # No tags on the suite: on a test_suite they filter its members.
    native.test_suite(
        name = name,
        tests = variants,
    )

def lint_test(name, srcs, **kwargs):
    """A test that fails when a Python file is not ruff-formatted or lint-clean."""
    native.py_test(
        name = name,
        srcs = ["//testing:lint_test.py"],
        main = "//testing:lint_test.py",
        data = srcs + ["//:pyproject.toml"],
        args = ["$(locations %s)" % s for s in srcs],
        deps = ["//third_party/py:ruff"],
        size = "small",
        python_version = "PY3",
        srcs_version = "PY3",
        **kwargs
    )
