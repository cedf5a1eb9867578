"""TF Serving's batching-parameters text proto: the project file, valid files, and every way to get it wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

import tf_serving
from serving_core.batching import BatchingConfigError, load_batching_parameters, parse_batching_parameters


def test_project_file_parses() -> None:
    p = load_batching_parameters(Path(tf_serving.__file__).parent / "batching.config")
    assert p.max_batch_size >= 1 and p.num_batch_threads >= 1
    if p.allowed_batch_sizes:
        assert p.allowed_batch_sizes[-1] == p.max_batch_size


def test_valid_file_with_comments_and_padding() -> None:
    p = parse_batching_parameters(
        "# comment\nmax_batch_size { value: 16 }\nbatch_timeout_micros { value: 500 }\n"
        "max_enqueued_batches { value: 3 }\nnum_batch_threads { value: 2 }\n"
        "allowed_batch_sizes: 4\nallowed_batch_sizes: 16\npad_variable_length_inputs: true\n"
    )
    assert (p.max_batch_size, p.batch_timeout_micros, p.max_enqueued_batches, p.num_batch_threads) == (16, 500, 3, 2)
    assert p.allowed_batch_sizes == (4, 16) and p.queue_capacity == 48
    assert [p.padded_size(n) for n in (1, 4, 5, 16)] == [4, 4, 16, 16]


def test_defaults_are_shared_batch_schedulers() -> None:
    p = parse_batching_parameters("")
    assert p.max_batch_size == 1000 and p.batch_timeout_micros == 0 and p.max_enqueued_batches == 10


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("max_batch_sizes { value: 4 }", "not a valid BatchingParameters"),
        ("max_batch_size: 4", "not a valid BatchingParameters"),  # a wrapper message, not a scalar
        ("max_batch_size { value: 0 }", "max_batch_size must be >= 1"),
        ("batch_timeout_micros { value: -1 }", "batch_timeout_micros must be >= 0"),
        ("num_batch_threads { value: 0 }", "num_batch_threads must be >= 1"),
        ("max_enqueued_batches { value: 0 }", "max_enqueued_batches must be >= 1"),
        (
            "max_batch_size { value: 8 } allowed_batch_sizes: 4 allowed_batch_sizes: 2 allowed_batch_sizes: 8",
            "increasing",
        ),
        ("max_batch_size { value: 8 } allowed_batch_sizes: 2 allowed_batch_sizes: 4", "must equal max_batch_size"),
    ],
)
def test_invalid_files_are_refused_with_a_reason(text: str, needle: str) -> None:
    with pytest.raises(BatchingConfigError, match="cfg") as info:
        parse_batching_parameters(text, "cfg")
    assert needle in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BatchingConfigError, match="cannot read batching parameters file"):
        load_batching_parameters(tmp_path / "nope.config")
