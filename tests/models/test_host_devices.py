"""port.host_devices: how `dln train` splits a CPU into one XLA device per core."""

from port.host_devices import (DEVICE_COUNT_FLAG, THREADS_FLAG, split_cpu_for_training,
                               training_device_count, training_xla_flags)


def test_the_device_count_is_the_largest_divisor_of_the_batch_within_the_cores():
    assert training_device_count(4, cores=2) == 2
    assert training_device_count(32, cores=2) == 2
    assert training_device_count(3, cores=2) == 1      # an odd batch is not split
    assert training_device_count(6, cores=4) == 3
    assert training_device_count(1, cores=16) == 1
    assert training_device_count(8, cores=1) == 1
    assert training_device_count(12, cores=8) == 6


def test_flags_add_the_split_keep_the_users_and_never_override_a_device_count():
    flags = training_xla_flags(4, "--xla_dump_to=/tmp/x", cores=2)
    assert flags.split() == ["--xla_dump_to=/tmp/x", f"{DEVICE_COUNT_FLAG}=2",
                             f"{THREADS_FLAG}=false"]
    # the user's own thread setting is kept, not contradicted
    flags = training_xla_flags(4, f"{THREADS_FLAG}=true", cores=2)
    assert flags.split() == [f"{THREADS_FLAG}=true", f"{DEVICE_COUNT_FLAG}=2"]
    assert training_xla_flags(4, f"{DEVICE_COUNT_FLAG}=8", cores=2) is None
    assert training_xla_flags(3, "", cores=2) is None    # nothing to split
    assert training_xla_flags(4, "", cores=1) is None


def test_split_sets_only_the_given_environment():
    environ = {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}
    count = split_cpu_for_training(2, environ)
    if count:   # a machine with at least two usable cores
        assert environ["XLA_FLAGS"].startswith("--xla_cpu_enable_fast_math=false ")
        assert f"{DEVICE_COUNT_FLAG}={count}" in environ["XLA_FLAGS"]
    else:
        assert environ == {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}


def test_inference_splits_two_cores_only_and_keeps_xlas_threads_otherwise():
    from port.host_devices import inference_device_count

    assert [inference_device_count(c) for c in (1, 2, 3, 4, 5, 16)] == [1, 2, 1, 1, 1, 1]


def test_the_split_switch_reads_off_0_false_and_no_in_any_case():
    from port.host_devices import split_wanted

    for word in ("off", "OFF", " Off ", "0", "false", "No"):
        assert not split_wanted({"DLN_CPU_SPLIT": word}), word
    for word in ("auto", "on", "1", ""):
        assert split_wanted({"DLN_CPU_SPLIT": word}), word
    assert split_wanted({})


def test_the_inference_split_follows_the_switch_and_never_overrides_a_device_count():
    from port.host_devices import split_cpu_for_inference

    environ = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    assert split_cpu_for_inference(environ, cores=2) == 2
    assert environ["XLA_FLAGS"].split() == ["--xla_dump_to=/tmp/x", f"{DEVICE_COUNT_FLAG}=2",
                                            f"{THREADS_FLAG}=false"]
    off = {"DLN_CPU_SPLIT": "off"}
    assert split_cpu_for_inference(off, cores=2) == 0 and off == {"DLN_CPU_SPLIT": "off"}
    users = {"XLA_FLAGS": f"{DEVICE_COUNT_FLAG}=3"}
    assert split_cpu_for_inference(users, cores=2) == 0
    assert users == {"XLA_FLAGS": f"{DEVICE_COUNT_FLAG}=3"}
    one = {}
    assert split_cpu_for_inference(one, cores=1) == 0 and one == {}


def test_inputs_spread_along_the_batch_then_the_height_then_the_width():
    from port.host_devices import spread_axis

    assert spread_axis((2, 48, 72, 3), 2) == 0      # one image per core
    assert spread_axis((3, 48, 72, 3), 2) == 1      # bands of each image
    assert spread_axis((1, 45, 72, 3), 2) == 2      # odd height: columns
    assert spread_axis((1, 45, 71, 3), 2) is None   # nothing divides: replicated
    assert spread_axis((1, 2, 1, 3), 4) is None     # fewer rows than devices
    assert spread_axis((4, 48, 72, 3), 4) == 0
