"""Malformed safetensors headers: we read exactly what the `safetensors` library reads, or
refuse (issue #12). Never different data, never a crash other than a `MergeError`."""

from __future__ import annotations

import json
import struct
import uuid

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from pvutils.tensorio import MergeError, SafetensorsSource

NAMES = ("a", "b", "c")
FIELDS = ("dtype", "shape", "data_offsets")


@pytest.fixture(scope="module")
def valid_file(tmp_path_factory):
    gen = torch.Generator().manual_seed(0)
    tensors = {"a": torch.randn(2, 3, generator=gen), "b": torch.randn(4).bfloat16(),
               "c": torch.arange(3, dtype=torch.int64)}
    path = tmp_path_factory.mktemp("headers") / "valid.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


small_int = st.integers(-4, 80)
mutation = st.one_of(
    st.tuples(st.just("offsets"), st.sampled_from(NAMES), small_int, small_int),
    st.tuples(st.just("shape"), st.sampled_from(NAMES),
              st.lists(st.integers(-1, 7), max_size=3)),
    st.tuples(st.just("dtype"), st.sampled_from(NAMES),
              st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F64", "X9", 5])),
    st.tuples(st.just("drop_field"), st.sampled_from(NAMES), st.sampled_from(FIELDS)),
    st.tuples(st.just("copy"), st.sampled_from(NAMES), st.sampled_from(NAMES + ("d",))),
    st.tuples(st.just("drop"), st.sampled_from(NAMES)),
    st.tuples(st.just("data"), st.integers(-12, 12)),
    st.tuples(st.just("length"), st.integers(-3, 3)),
    st.tuples(st.just("metadata"), st.sampled_from([{"format": 1}, [], "x", {"k": "v"}])),
    st.tuples(st.just("garbage"), st.binary(max_size=12)),
)
accepted = st.one_of(  # changes the library accepts: the reader must follow them
    st.tuples(st.just("swap_ranges"), st.sampled_from([("a", "c"), ("c", "a")])),
    st.tuples(st.just("shape"), st.sampled_from(("a", "c")),
              st.sampled_from([[6], [3, 2], [1, 6], [2, 3]])),
    st.tuples(st.just("dtype"), st.sampled_from(NAMES), st.sampled_from(["I32", "F16", "I16"])),
)


def forge(header: dict, data: bytes, mutations) -> bytes:
    header = json.loads(json.dumps(header))
    length_delta, garbage = 0, None
    for m in mutations:
        kind, *args = m
        if kind == "offsets" and args[0] in header:
            header[args[0]]["data_offsets"] = [args[1], args[2]]
        elif kind == "shape" and args[0] in header:
            header[args[0]]["shape"] = args[1]
        elif kind == "dtype" and args[0] in header:
            header[args[0]]["dtype"] = args[1]
        elif kind == "drop_field" and args[0] in header:
            header[args[0]].pop(args[1], None)
        elif kind == "copy" and args[0] in header:
            header[args[1]] = dict(header[args[0]])
        elif kind == "swap_ranges" and all(isinstance(header.get(n), dict)
                                           and "data_offsets" in header[n] for n in args[0]):
            x, y = args[0]
            header[x]["data_offsets"], header[y]["data_offsets"] = \
                header[y]["data_offsets"], header[x]["data_offsets"]
        elif kind == "drop":
            header.pop(args[0], None)
        elif kind == "data":
            data = data[:args[0]] if args[0] < 0 else data + b"\0" * args[0]
        elif kind == "length":
            length_delta = args[0]
        elif kind == "metadata":
            header["__metadata__"] = args[0]
        elif kind == "garbage":
            garbage = args[0]
    blob = garbage if garbage is not None else json.dumps(header).encode()
    return struct.pack("<Q", max(0, len(blob) + length_delta)) + blob + data


def read_ours(path):
    src = SafetensorsSource(path)
    out = {n: src.get(n) for n in src.keys()}
    for n in src.keys():  # the row-block path reads the same bytes
        if len(src.shape(n)) == 2:
            assert torch.equal(src.get_rows(n, 1, 2), out[n][1:2])
    return out


def read_library(path):
    with safe_open(str(path), framework="pt") as f:
        return {n: f.get_tensor(n) for n in f.keys()}


def raw_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(st.one_of(accepted, mutation), min_size=1, max_size=3))
def test_same_tensors_as_the_library_or_a_refusal(valid_file, tmp_path, mutations):
    header, data = valid_file
    path = tmp_path / f"{uuid.uuid4().hex}.safetensors"
    path.write_bytes(forge(header, data, mutations))
    try:
        ours = read_ours(path)
    except MergeError:
        ours = None
    try:
        theirs = read_library(path)
    except Exception:  # noqa: BLE001  (the library's errors differ by kind; a refusal is one)
        theirs = None
    event("the library reads it" if theirs is not None else "the library refuses it")
    if theirs is None:
        assert ours is None, f"read a file the library refuses: {mutations}"
        return
    if ours is None:  # stricter than the library: only for a key duplicated in the JSON
        assert "duplicate" in _refusal(path) or "parsers" in _refusal(path), mutations
        return
    assert sorted(ours) == sorted(theirs)
    for name in ours:
        assert ours[name].dtype == theirs[name].dtype and ours[name].shape == theirs[name].shape
        assert raw_bytes(ours[name]) == raw_bytes(theirs[name]), name


def _refusal(path) -> str:
    try:
        SafetensorsSource(path)
    except MergeError as err:
        return str(err)
    return ""


def test_the_unmodified_file_reads_back(valid_file, tmp_path):
    header, data = valid_file
    path = tmp_path / "same.safetensors"
    path.write_bytes(forge(header, data, []))
    ours, theirs = read_ours(path), read_library(path)
    assert {n: raw_bytes(t) for n, t in ours.items()} == \
        {n: raw_bytes(t) for n, t in theirs.items()}
